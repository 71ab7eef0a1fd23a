"""Render the `onnx` export with Hugging Face Optimum's ONNX Runtime pipeline, run by the cached
optimum reader env (scripts/reader_envs.py optimum), for tests/train/test_export_onnx.py.

    python optimum_render.py ONNX_DIR LATENTS.npy OUT.npy PROMPT STEPS

Loads the folder with `ORTStableDiffusionPipeline.from_pretrained` (CPU provider), renders the
prompt from the given starting latents and writes the image (float HxWx3 in [0, 1]) to OUT.npy,
and the reader's versions to OUT.npy.json. Standalone on purpose: it must not import the project.
"""

import json
import sys

import numpy as np
import torch


def main():
    folder, latents, out, prompt, steps = sys.argv[1:6]
    torch.set_num_threads(1)
    import onnxruntime
    import optimum.version
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    pipe = ORTStableDiffusionPipeline.from_pretrained(folder, provider="CPUExecutionProvider")
    pipe.set_progress_bar_config(disable=True)
    start = torch.from_numpy(np.load(latents))
    scale = pipe.vae_scale_factor
    image = pipe(prompt, num_inference_steps=int(steps), latents=start, height=start.shape[2] * scale,
                 width=start.shape[3] * scale, output_type="np",
                 generator=torch.Generator("cpu").manual_seed(0)).images[0]  # a DDPM step draws noise too
    np.save(out, image)
    import diffusers
    import transformers
    with open(out + ".json", "w") as f:
        json.dump({"pipeline": type(pipe).__name__, "optimum": optimum.version.__version__,
                   "onnxruntime": onnxruntime.__version__, "diffusers": diffusers.__version__,
                   "transformers": transformers.__version__}, f)


if __name__ == "__main__":
    main()
