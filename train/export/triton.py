"""The `triton` export: one NVIDIA Triton model repository entry per user model, packed as the
`.tar.gz` a SageMaker GPU multi-model endpoint (which runs Triton) loads.

    triton/<name>.tar.gz
      <name>/config.pbtxt        Python backend; prompt/seed/steps/size in, PNG bytes out
      <name>/1/model.py          TritonPythonModel (source: triton_model.py)
      <name>/1/inference.py      the artifact loader shared with the `mme` archive (mme_handler.py)
      <name>/1/serving.json      what the artifact is and how to load it
      <name>/1/...               the artifact: pytorch_lora_weights.safetensors, or a merged
                                 pipeline folder's contents (model_index.json, unet/, ...)

config.pbtxt names no model (Triton takes the folder's name), so an endpoint may unpack the
archive under any name. A LoRA archive loads its base from `BASE_MODEL_DIR` (env) or the base
path recorded in serving.json. Each Triton model runs in its own stub process, so a LoRA-only
archive holds its own copy of the base per loaded user: `measure_footprint` loads the entry
the way the stub does, in a fresh process, and the manifest records what it holds.
Supports the SD family (StableDiffusionPipeline).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from . import mme
from .errors import ExportError

MODEL_SOURCE = Path(__file__).with_name("triton_model.py")
VERSION = "1"

CONFIG_TEMPLATE = """\
# Triton model configuration (written by lora-fanout). The model name is the folder's name.
backend: "python"
max_batch_size: 0
input [
  {{ name: "prompt" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "seed" data_type: TYPE_INT64 dims: [ 1 ] optional: true }},
  {{ name: "steps" data_type: TYPE_INT32 dims: [ 1 ] optional: true }},
  {{ name: "size" data_type: TYPE_INT32 dims: [ 2 ] optional: true }}
]
output [
  {{ name: "image" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ count: 1 kind: KIND_AUTO }} ]
parameters: {{ key: "artifact" value: {{ string_value: "{source}" }} }}
{env}"""


def config_pbtxt(source: str, execution_env: str = "") -> str:
    env = ""
    if execution_env and execution_env != "none":
        if '"' in execution_env or "\n" in execution_env:
            raise ExportError(f"triton_env={execution_env!r}: a path without quotes or newlines is needed")
        env = f'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{execution_env}" }} }}\n'
    return CONFIG_TEMPLATE.format(source=source, env=env)


def write_archive(members: Sequence[Path], out_path: Path, *, name: str, source: str, base_model_dir: Path,
                  load: str, execution_env: str = "") -> Path:
    """Lay out the repository entry in a temporary folder and pack it reproducibly (sorted
    members, zero mtimes, root owner) with the `mme` archive's packer."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".triton-", dir=out_path.parent) as tmp:
        entry = Path(tmp) / name
        version = entry / VERSION
        version.mkdir(parents=True)
        (entry / "config.pbtxt").write_text(config_pbtxt(source, execution_env))
        shutil.copyfile(MODEL_SOURCE, version / "model.py")
        shutil.copyfile(mme.HANDLER_SOURCE, version / "inference.py")
        for member in members:
            if member.is_dir():
                shutil.copytree(member, version, dirs_exist_ok=True)
            else:
                shutil.copyfile(member, version / member.name)
        serving = mme.serving_info(source, load, base_model_dir,
                                   sorted(p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file()))
        (version / mme.SERVING_NAME).write_text(json.dumps(serving, indent=2) + "\n")
        # Level 1: weights barely compress, and level 9 takes minutes on a 2 GB merged pipeline.
        mme.pack_tree(Path(tmp), out_path, compresslevel=1)
    return out_path


def unpack(archive: Path, repository: Path, name: str | None = None) -> Path:
    """Unpack an archive into a model repository (what the endpoint does), optionally under
    another model name. Returns the model's folder."""
    import tarfile

    repository = Path(repository)
    with tarfile.open(archive) as tar:
        tops = {m.name.split("/")[0] for m in tar.getmembers()}
        if len(tops) != 1:
            raise ExportError(f"{archive}: expected one model folder at the archive root, found {sorted(tops)}")
        tar.extractall(repository, filter="data")
    top = repository / tops.pop()
    if name and top.name != name:
        top = top.rename(repository / name)
    return top


FOOTPRINT_CODE = """
import json, os, sys
def rss():
    fields = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
import torch, diffusers, transformers, peft
from diffusers import StableDiffusionPipeline  # the runtime a model process holds before any weights
sys.path.insert(0, sys.argv[1])
import inference
before = rss()[0]
pipe = inference.model_fn(sys.argv[1])
loaded = rss()[0]
# One small request: weights loaded with mmap (safetensors, torch.load) count only once touched.
pipe.set_progress_bar_config(disable=True)
pipe("footprint", num_inference_steps=1, height=64, width=64, generator=torch.Generator("cpu").manual_seed(0))
after, peak = rss()
weights = sum(t.numel() * t.element_size() for n in ("unet", "text_encoder", "vae")
              for t in list(getattr(pipe, n).parameters()) + list(getattr(pipe, n).buffers()))
gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
print(json.dumps({"rss_bytes": after, "peak_rss_bytes": peak, "runtime_rss_bytes": before,
                  "model_rss_bytes": after - before, "rss_after_load_bytes": loaded, "weights_bytes": weights, "gpu_bytes": gpu,
                  "device": "cuda" if torch.cuda.is_available() else "cpu",
                  "torch": torch.__version__, "diffusers": diffusers.__version__}))
"""


def measure_footprint(archive: Path, *, python: str = sys.executable, timeout: float = 600) -> dict:
    """Memory one loaded user model holds: unpack the archive, load its `1/` folder with the
    shared loader in a fresh process (as the Triton stub does), serve one small request (so
    mmap-loaded weights are counted) and read that process's RSS. `model_rss_bytes` is what the
    model adds to a process that already imported torch and diffusers (`runtime_rss_bytes`);
    each Triton model process pays both. On a GPU, `gpu_bytes` is the figure that counts."""
    with tempfile.TemporaryDirectory(prefix="triton-footprint-") as tmp:
        entry = unpack(archive, Path(tmp))
        env = {**os.environ, "PYTHONPATH": ""}
        proc = subprocess.run([python, "-c", FOOTPRINT_CODE, str(entry / VERSION)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    if proc.returncode:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise ExportError(f"loading {archive.name} to measure its footprint failed: {tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["method"] = ("1/inference.py model_fn in a fresh process, then one 64 px 1-step request; "
                        "/proc/self/status VmRSS")
    return result
