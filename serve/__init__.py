"""The inference side: a SageMaker inference container that keeps one base pipeline per GPU
warm and swaps each request's user LoRA in (diffusers LoRA hotswap), so hosting cost grows with
traffic, not with the number of users.

    python -m serve --base-model DIR [--port 8080] [--cache-size N]     (the image's `serve`)

``GET /ping`` is 200 once the base is loaded; ``POST /invocations`` takes
``{"model": "<s3:// URI, local folder or user/model id>", "prompt": "...", ...}`` and answers
``{"images": ["<base64>", ...], "model": ..., "cache": "hit"|"miss", "seconds": ...}``.
docs/serving.md has the contract, the cache, the isolation guarantee and the errors.

Layers: ``config`` (ServeConfig, every default), ``request`` (request JSON -> Generation, pure),
``sources`` (where a model's files come from: local, S3, the models table), ``cache`` (the
disk and memory LRUs), ``adapters`` (a LoRA file -> checked, converted weights), ``engine``
(the pipeline, hotswap, rendering), ``service`` (one request end to end), ``app`` (FastAPI),
``cli``. Importing this package is light: torch loads in ``engine`` only.
"""

from serve.errors import ServeError

__all__ = ["ServeError"]
