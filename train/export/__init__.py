"""Exports of a trained LoRA: the diffusers and kohya files, merged and quantized pipelines, ONNX
graphs, a SageMaker multi-model archive, a Triton model-repository archive (GPU multi-model
endpoints), and `manifest.json` (files, hashes, base model, drift, verified readers).

    from train.export import ExportConfig, export_model
    manifest = export_model(pipe, ExportConfig(formats=("lora", "kohya")), model_dir,
                            base_model_dir=..., train_text_encoder=False, rank=4, lora_alpha=4)

`python -m train.export --lora DIR --base DIR --formats ... --out DIR` exports again from a
LoRA already on disk. Importing this package stays light (no torch) until `export_model` is
used.
"""

from .config import FORMATS, GPU_FORMATS, ExportConfig, parse_formats
from .errors import ExportConfigError, ExportError

__all__ = ["FORMATS", "GPU_FORMATS", "ExportConfig", "ExportConfigError", "ExportError", "export_model",
           "parse_formats"]


def __getattr__(name: str):
    if name == "export_model":
        from .exporter import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
