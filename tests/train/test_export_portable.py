"""Exported files read by older stacks: diffusers 0.32 + transformers 4.54 + peft 0.17 (what many
serving images pin) and diffusers 0.35 with the same transformers/peft, in a small env that
scripts/reader_envs.py builds once and caches. Each loads the `lora` file (UNet-only with
lora_alpha != rank, and with a trained text encoder), the `kohya` file and the `merged-fp16`
folder, and must draw the same image as the current stack."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from scripts_loader import load_script  # noqa: E402
from test_export_formats import attach_lora, load_pipe  # noqa: E402
from train.export import ExportConfig, export_model  # noqa: E402
from train.export.portable import PORTABLE_LORA_FIELDS  # noqa: E402

RANK, ALPHA = 4, 8
PROMPT = "a photo of sks dog"
CALL = dict(prompt=PROMPT, seed=5, steps=2, size=64)
HERE = __import__("pathlib").Path(__file__).parent


@pytest.fixture(scope="module")
def old_env():
    envs = load_script("reader_envs")
    try:
        return envs.ensure_env("old-stack")
    except envs.EnvBuildError as e:
        pytest.skip(f"the old-stack wheels cannot be installed here: {e}")


def unet_only_lora(tiny_model):
    from peft import LoraConfig

    pipe = load_pipe(tiny_model)
    torch.manual_seed(3)
    pipe.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return pipe


def draw(pipe) -> np.ndarray:
    image = pipe(PROMPT, num_inference_steps=CALL["steps"], height=CALL["size"], width=CALL["size"],
                 generator=torch.Generator("cpu").manual_seed(CALL["seed"])).images[0]
    return np.asarray(image)


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    """{case: (job for reader_render.py, image the current stack draws)}."""
    root = tmp_path_factory.mktemp("portable")
    cases = {}
    for name, pipe, te in (("unet", unet_only_lora(tiny_model), False), ("te", attach_lora(load_pipe(tiny_model)), True)):
        formats = "lora,kohya,merged-fp16" if te else "lora"
        export_model(pipe, ExportConfig(formats=formats, drift_check=False), root / name, base_model_dir=tiny_model,
                     train_text_encoder=te, rank=RANK, lora_alpha=ALPHA)
        image = draw(pipe)
        common = {"base": str(tiny_model), **CALL}
        # diffusers 0.32 cannot guess the file name offline (HF_HUB_OFFLINE=1): name it.
        cases[f"lora-{name}"] = ({"kind": "lora", "path": str(root / name),
                                  "weight_name": "pytorch_lora_weights.safetensors", **common}, image)
        if te:
            cases["kohya-te"] = ({"kind": "lora", "path": str(root / name), "weight_name": "lora_kohya.safetensors",
                                  **common}, image)
            merged = root / name / "merged-fp16"
            cases["merged-fp16-te"] = ({"kind": "merged", "path": str(merged), **common}, draw(load_pipe(merged)))
    return cases


def read_with(old_env, exported, tmp_path, side: str | None):
    jobs = [{"id": case, **job} for case, (job, _) in exported.items()]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = {"PYTHONPATH": str(old_env / side) if side else "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(old_env / "bin" / "python"), str(HERE / "reader_render.py"), str(tmp_path / "jobs.json"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "out"


@pytest.mark.slow
@pytest.mark.parametrize("side, version", [(None, "0.32.2"), ("diffusers-0.35.2", "0.35.2")])
def test_older_stacks_load_every_file_and_draw_the_same_image(old_env, exported, tmp_path, side, version, tiny_model):
    out = read_with(old_env, exported, tmp_path, side)
    versions = json.loads((out / "versions.json").read_text())
    assert (versions["diffusers"], versions["transformers"], versions["peft"]) == (version, "4.54.1", "0.17.1")
    base = draw(load_pipe(tiny_model))
    for case, (_, image) in exported.items():
        error = out / f"{case}.error"
        assert not error.exists(), f"{case} with diffusers {version}:\n{error.read_text()[-1500:]}"
        got = np.load(out / f"{case}.npy")
        assert np.array_equal(got, image), f"{case} with diffusers {version}: mean diff {np.abs(got - image).mean()}"
        assert np.abs(got.astype(int) - base).mean() > 1, f"{case}: the LoRA has no effect"


def test_lora_file_carries_only_portable_metadata_and_clip_key_names(exported):
    from safetensors import safe_open

    job, _ = exported["lora-te"]
    with safe_open(f"{job['path']}/pytorch_lora_weights.safetensors", "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    te_keys = [k for k in keys if k.startswith("text_encoder.")]
    assert te_keys and all(k.startswith("text_encoder.text_model.") for k in te_keys)
    adapters = json.loads(metadata["lora_adapter_metadata"])
    for prefix in ("unet", "text_encoder"):
        config = {k.removeprefix(f"{prefix}."): v for k, v in adapters.items() if k.startswith(f"{prefix}.")} or adapters
        assert set(config) <= set(PORTABLE_LORA_FIELDS), sorted(set(config) - set(PORTABLE_LORA_FIELDS))


def test_merged_text_encoder_is_saved_in_the_layout_transformers_4_reads(exported):
    from safetensors import safe_open

    job, _ = exported["merged-fp16-te"]
    with safe_open(f"{job['path']}/text_encoder/model.safetensors", "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())
