"""Triton Python-backend model packed into every `triton` archive as `<name>/1/model.py`.

Self-contained on purpose: it runs in the serving env (EXECUTION_ENV_PATH, or the Triton
image's own Python) with torch + diffusers (+ peft for a LoRA archive), not this project. The
artifact sits beside it in `1/` with `serving.json`, and `1/inference.py` (the same loader the
SageMaker `mme` archive uses) loads it: base + LoRA, or a merged pipeline folder.

Inputs:  prompt TYPE_STRING [1]; optional seed TYPE_INT64 [1] (default 0), steps TYPE_INT32 [1]
         (default 25), size TYPE_INT32 [2] = height, width (default: the model's native size).
Output:  image TYPE_STRING [1], the PNG bytes.
The starting noise comes from a CPU generator seeded with `seed`: same seed, same image, on
any device. A bad request gets an error response with Triton's INVALID_ARG code (HTTP 400:
the caller's error, not the server's); the others in the batch still run.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

DEFAULT_STEPS = 25
MAX_STEPS = 200
MAX_SIDE = 2048


class BadRequest(ValueError):
    """The caller sent something invalid: answered with INVALID_ARG (HTTP 400), not INTERNAL."""


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        sys.path.insert(0, str(version_dir))
        import inference  # 1/inference.py: the loader shared with the mme archive

        self.pipe = inference.model_fn(version_dir)
        self.pipe.set_progress_bar_config(disable=True)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                png = self._generate(request)
                out = pb_utils.Tensor("image", np.array([png], dtype=np.object_))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except BadRequest as e:
                error = pb_utils.TritonError(f"BadRequest: {e}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            except Exception as e:  # one failed request must not fail the others in the batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}")))
        return responses

    def finalize(self):
        self.pipe = None

    def _generate(self, request) -> bytes:
        import torch

        prompt = _scalar(request, "prompt", None)
        if prompt is None:
            raise BadRequest("input 'prompt' is required")
        prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        seed = int(_scalar(request, "seed", 0))
        steps = int(_scalar(request, "steps", DEFAULT_STEPS))
        if not 1 <= steps <= MAX_STEPS:
            raise BadRequest(f"steps={steps}: must be 1..{MAX_STEPS}")
        size = pb_utils.get_input_tensor_by_name(request, "size")
        kwargs = {}
        if size is not None:
            height, width = (int(v) for v in size.as_numpy().reshape(-1)[:2])
            if not (8 <= height <= MAX_SIDE and 8 <= width <= MAX_SIDE and height % 8 == 0 and width % 8 == 0):
                raise BadRequest(f"size={height}x{width}: each side must be a multiple of 8 in 8..{MAX_SIDE}")
            kwargs = {"height": height, "width": width}
        generator = torch.Generator("cpu").manual_seed(seed)
        image = self.pipe(prompt, num_inference_steps=steps, generator=generator, **kwargs).images[0]
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()


def _scalar(request, name: str, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0]
