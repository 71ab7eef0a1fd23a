"""One task's DreamBooth LoRA training: config, data, base model, loop, previews, resume, export.

Heavy imports (torch, diffusers) happen inside the functions that need them, so the CLI's
``--help`` and its config errors stay fast. See docs/train.md.
"""
