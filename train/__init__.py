"""One task's DreamBooth LoRA training: config, data, base model, loop, previews, resume, export.

Heavy imports (torch, diffusers) happen inside the functions that need them, so the CLI's
``--help`` and its config errors stay fast. See docs/train.md.
"""

import logging as _logging

# Import-time noise that says nothing to a user of this package, printed on every run before
# the first useful line: torchao's CUDA-only kernels failing to load in a CPU torch build, the
# matching diffusers notice, and a torch deprecation about torchao's enums. Real errors from
# these libraries are still shown (only their WARNING level is raised to ERROR). transformers'
# import_utils only warns there that torchvision is absent (we use no image processor).
# bitsandbytes' CPU backend warns that it could not fetch an optional kernel from the Hub
# (`kernels` is not installed: nothing downloads at run time); its built-in kernel is used.
# diffusers' lora_base warns when a LoRA file has no text-encoder keys, which is what our own
# exports hold unless train_text_encoder is on (the UNet's missing keys stay a warning).
for _name in ("torchao", "diffusers.quantizers.torchao.torchao_quantizer", "torch.utils._pytree",
              "transformers.utils.import_utils", "bitsandbytes.backends.cpu.ops",
              "diffusers.loaders.lora_base"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
