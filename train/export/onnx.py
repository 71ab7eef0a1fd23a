"""The `onnx` export: the LoRA fused into the UNet (and the text encoder when it was trained),
exported with `torch.onnx.export(dynamo=True)` together with the VAE decoder, then checked with
onnxruntime on the CPU. The folder is in the layout Hugging Face Optimum's ONNX Runtime
pipelines load (`ORTStableDiffusionPipeline.from_pretrained("onnx")`): one folder per part,
`model.onnx` and the part's `config.json` in it.

    onnx/text_encoder/model.onnx  input_ids [batch, 77] int64   -> last_hidden_state, pooler_output
    onnx/unet/model.onnx          sample [batch, 4, h, w], timestep [] (float32), encoder_hidden_states
                                  [batch, 77, dim]               -> out_sample
    onnx/vae_decoder/model.onnx   latent_sample [batch, 4, h, w] -> sample (RGB in [-1, 1])
    onnx/<part>/config.json       the base's config of that part (vae_decoder: the VAE's)
    onnx/<part>/model.onnx.data   the weights, beside their graph, only where one graph would pass
                                  protobuf's 2 GB limit
    onnx/tokenizer/, onnx/scheduler/, onnx/model_index.json, and onnx/feature_extractor/ when the
    base's model_index.json lists one: copied from the base

Batch and latent height/width are dynamic. The check runs every graph with onnxruntime at two
latent shapes and compares with the fused torch module (max abs diff must stay within
`ONNX_TOLERANCE`), and compares the UNet with the base UNet: an export that lost the LoRA
would be within tolerance of the base, so the manifest records that distance too.
Supports the SD family (SD 1.x/2.x UNet + CLIP + AutoencoderKL).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .errors import ExportError
from .merged import fused_state_dict, module_from_state_dict

ONNX_DIR = "onnx"
GRAPH = "model.onnx"
# part folder -> the base's component whose config.json goes beside the graph
PARTS = {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae"}
ONNX_TOLERANCE = 1e-3
PROTOBUF_LIMIT = 2 * 1024**3  # one ModelProto cannot exceed 2 GB
OPSET = 18
COPIED = ("tokenizer", "scheduler", "model_index.json")
OPTIONAL_COPIED = ("feature_extractor",)  # copied when the base's model_index.json lists it
CHECK_SHAPES_LATENT = ((1, 1), (1, 2))  # multiples of the UNet's downsampling factor: (h, w) x factor


class _UNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class _TextEncoder(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        out = self.text_encoder(input_ids, return_dict=False)
        return out[0], out[1]


class _VaeDecoder(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


def needs_external_data(nbytes: int) -> bool:
    """Weights go to a side file when the graph would pass the protobuf limit (with headroom for
    the graph itself)."""
    return nbytes > PROTOBUF_LIMIT - 64 * 1024**2


def write_onnx(pipe, base_model_dir: Path, out_dir: Path) -> Path:
    """Export the fused fp32 modules of `pipe` to `out_dir` (replaced). Returns `out_dir`."""
    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    _copy_from_base(base_model_dir, out_dir)
    unet, text_encoder, vae = (plain_module(getattr(pipe, n)) for n in ("unet", "text_encoder", "vae"))
    dims = _example_dims(unet, text_encoder)
    batch, h, w = torch.export.Dim("batch", min=1, max=32), torch.export.Dim.AUTO, torch.export.Dim.AUTO
    ids = torch.zeros(2, dims["tokens"], dtype=torch.int64)
    _export(_TextEncoder(text_encoder), (ids,), graph_path(out_dir, "text_encoder"),
            {"input_ids": {0: batch}}, ["input_ids"], ["last_hidden_state", "pooler_output"])
    latents = torch.zeros(2, dims["channels"], dims["h"], dims["w"])
    hidden = torch.zeros(2, dims["tokens"], dims["hidden"])
    _export(_UNet(unet), (latents, torch.tensor(1.0), hidden), graph_path(out_dir, "unet"),
            {"sample": {0: batch, 2: h, 3: w}, "timestep": None, "encoder_hidden_states": {0: batch}},
            ["sample", "timestep", "encoder_hidden_states"], ["out_sample"])
    _export(_VaeDecoder(vae), (torch.zeros(2, vae.config.latent_channels, dims["h"], dims["w"]),),
            graph_path(out_dir, "vae_decoder"), {"latent_sample": {0: batch, 2: h, 3: w}},
            ["latent_sample"], ["sample"], nbytes=_bytes(vae.decoder) + _bytes(vae.post_quant_conv))
    return out_dir


def graph_path(out_dir: Path, part: str) -> Path:
    return Path(out_dir) / part / GRAPH


def _copy_from_base(base_model_dir: Path, out_dir: Path) -> None:
    """Tokenizer, scheduler, model_index.json (and feature_extractor/ when listed), and each
    part's config.json, so that Optimum's loader finds everything it reads beside the graphs."""
    import json

    listed = json.loads((base_model_dir / "model_index.json").read_text())
    optional = tuple(n for n in OPTIONAL_COPIED if (listed.get(n) or [None])[0] is not None)
    for name in COPIED + optional:
        src = base_model_dir / name
        if src.is_dir():
            shutil.copytree(src, out_dir / name)
        elif src.is_file():
            shutil.copyfile(src, out_dir / name)
        elif name in optional:
            raise ExportError(f"{base_model_dir}/model_index.json lists {name} but the folder has no {name}/")
    for part, component in PARTS.items():
        (out_dir / part).mkdir()
        shutil.copyfile(base_model_dir / component / "config.json", out_dir / part / "config.json")


def plain_module(module):
    """A new fp32 module of `module`'s class with its adapter (if any) fused in; `module` is untouched."""
    return module_from_state_dict(module, fused_state_dict(module, torch.float32))


def _example_dims(unet, text_encoder) -> dict:
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    side = max(factor * 2, 8)
    return {"channels": unet.config.in_channels, "h": side, "w": side, "factor": factor,
            "tokens": text_encoder.config.max_position_embeddings, "hidden": text_encoder.config.hidden_size}


def _bytes(module) -> int:
    return 0 if module is None else sum(p.numel() * p.element_size() for p in module.parameters())


def _export(module, args, path: Path, dynamic_shapes, input_names, output_names, nbytes: int | None = None) -> None:
    """`nbytes`: the weights the graph holds (default: all of `module`'s)."""
    nbytes = _bytes(module) if nbytes is None else nbytes
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(module.eval(), args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                    input_names=input_names, output_names=output_names, opset_version=OPSET,
                                    verbose=False)
    if program is None:
        raise ExportError(f"torch.onnx.export returned nothing for {path.name}")
    program.save(str(path), external_data=needs_external_data(nbytes))


def verify(pipe, base_pipe, out_dir: Path) -> dict:
    """Run the graphs with onnxruntime (CPU) at two latent shapes against the fused torch modules.

    Returns `{"max_abs_diff": {graph: value}, "shapes": [...], "unet_max_abs_diff_vs_base": x,
    "within_tolerance": bool, "differs_from_base": bool, "seconds": s}`."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    unet, text_encoder, vae = (plain_module(getattr(pipe, n)) for n in ("unet", "text_encoder", "vae"))
    dims = _example_dims(unet, text_encoder)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sessions = {n: ort.InferenceSession(str(graph_path(out_dir, n)), opts, providers=["CPUExecutionProvider"])
                for n in PARTS}
    gen = torch.Generator("cpu").manual_seed(0)
    diffs = {n: 0.0 for n in sessions}
    vs_base = 0.0
    shapes = []
    prompt_ids = pipe.tokenizer(["a photo of sks dog", ""], padding="max_length", truncation=True,
                                max_length=dims["tokens"], return_tensors="pt").input_ids
    with torch.no_grad():
        te_ref = text_encoder(prompt_ids, return_dict=False)
        te_ort = sessions["text_encoder"].run(None, {"input_ids": prompt_ids.numpy()})
        diffs["text_encoder"] = max(_max_diff(te_ort[0], te_ref[0]), _max_diff(te_ort[1], te_ref[1]))
        hidden = te_ref[0]
        for mh, mw in CHECK_SHAPES_LATENT:
            h, w = dims["h"] * mh, dims["w"] * mw
            shapes.append([2, dims["channels"], h, w])
            latents = torch.randn(2, dims["channels"], h, w, generator=gen)
            t = torch.tensor(500.0)
            ref = unet(latents, t, hidden, return_dict=False)[0]
            got = sessions["unet"].run(None, {"sample": latents.numpy(), "timestep": t.numpy(),
                                              "encoder_hidden_states": hidden.numpy()})[0]
            diffs["unet"] = max(diffs["unet"], _max_diff(got, ref))
            base_out = base_pipe.unet(latents, t, base_pipe.text_encoder(prompt_ids, return_dict=False)[0],
                                      return_dict=False)[0]
            vs_base = max(vs_base, _max_diff(got, base_out))
            dec_ref = vae.decode(latents, return_dict=False)[0]
            dec = sessions["vae_decoder"].run(None, {"latent_sample": latents.numpy()})[0]
            diffs["vae_decoder"] = max(diffs["vae_decoder"], _max_diff(dec, dec_ref))
    worst = max(diffs.values())
    return {"max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()}, "shapes": shapes,
            "tolerance": ONNX_TOLERANCE, "within_tolerance": worst <= ONNX_TOLERANCE,
            "unet_max_abs_diff_vs_base": float(f"{vs_base:.3g}"), "differs_from_base": vs_base > 10 * ONNX_TOLERANCE,
            "seconds": round(time.perf_counter() - t0, 3)}


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - b.detach().double().numpy())))
