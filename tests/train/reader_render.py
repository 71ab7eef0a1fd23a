"""Render exported artifacts with whatever diffusers stack runs this file (an older one, in the
cached old-stack env), for tests/train/test_export_portable.py.

    python reader_render.py JOBS.json OUT_DIR

JOBS.json: [{"id", "kind": "lora"|"merged", "base", "path", "weight_name"?, "prompt", "seed", "steps",
"size"}]. Writes OUT_DIR/<id>.npy (uint8 HxWx3) per job, or OUT_DIR/<id>.error with the
exception text, and OUT_DIR/versions.json. Standalone on purpose: it must not import the project.
"""

import json
import sys
import traceback
from pathlib import Path

import numpy as np
import torch


def render(job):
    from diffusers import StableDiffusionPipeline

    kwargs = {"safety_checker": None, "requires_safety_checker": False}
    if job["kind"] == "merged":
        pipe = StableDiffusionPipeline.from_pretrained(job["path"], **kwargs)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(job["base"], **kwargs)
        pipe.load_lora_weights(job["path"], **({"weight_name": job["weight_name"]} if job.get("weight_name") else {}))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(job["prompt"], num_inference_steps=job["steps"], height=job["size"], width=job["size"],
                 generator=torch.Generator("cpu").manual_seed(job["seed"])).images[0]
    return np.asarray(image)


def main():
    jobs, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    import diffusers, peft, transformers

    (out / "versions.json").write_text(json.dumps({"diffusers": diffusers.__version__, "peft": peft.__version__,
                                                   "transformers": transformers.__version__,
                                                   "torch": torch.__version__}))
    for job in jobs:
        try:
            np.save(out / f"{job['id']}.npy", render(job))
        except Exception:
            (out / f"{job['id']}.error").write_text(traceback.format_exc())


if __name__ == "__main__":
    main()
