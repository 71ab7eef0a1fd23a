"""TrainConfig: every knob of one training task, its default, its help text and its checks.

Defaults live only here. The CLI (``train/cli.py``) builds its flags from these fields, the
container builds the config from SageMaker hyperparameters with ``TrainConfig.from_dict``,
which converts strings by each field's declared type (SageMaker sends every value as a
string, and the SageMaker Python SDK JSON-quotes them: ``"400"`` arrives as ``"\\"400\\""``).

A config remembers which settings were given (``given``: the keys of ``from_dict``, a flag, a
config file, a job or task hyperparameter): ``train.recipes.resolve`` fills every other one a
model family's recipe has from that recipe, and the result records what it took (``recipe``).
The field defaults below are what a setting is when neither the caller nor the family's recipe
sets it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from train.crops import CROPS  # light: no torch, no OpenCV
from train.errors import ConfigError
from train.export.config import TRITON_ENV_DEFAULT  # light: no torch
from train.export.formats import FORMATS
from train.flow import WEIGHTING_SCHEMES
from train.hyperparameters import decode, reject_unknown, unquote
from train.quality.gate import MAXIMA as QUALITY_MAXIMA, ON_QUALITY_FAIL, SCORES as QUALITY_SCORES, gate_problem
from train.quantize import BASE_QUANTIZATIONS
from fanout.redaction import shown, shown_name
from train.screen import CHECKS, SCREEN_MODES

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
SAVE_DTYPES = ("fp32", "fp16", "bf16")
FLOW_FAMILIES = ("flux", "flux2-klein", "z-image", "qwen-image")
GUIDANCE_EMBED_FAMILIES = ("flux", "flux2-klein")  # transformers with a guidance input (FLUX.1-dev)


def _f(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainConfig:
    # --- what to train on (paths and prompts: the container derives these per task) ---
    pretrained_model: str = _f("", "folder of a diffusers pipeline (the base model: SD 1.x/2.x, SDXL, FLUX.1, "
                                   "FLUX.2 Klein, Z-Image or Qwen-Image; the family is read from its "
                                   "model_index.json)")
    instance_data: str = _f("", "folder of the subject's photos (jpg, png, webp, heic/heif, avif; NAME.txt beside an "
                                "image overrides its caption)")
    instance_prompt: str = _f("", "prompt with the subject's token, e.g. 'a photo of sks dog'")
    output_dir: str = _f("", "where model/ (LoRA exports) and checkpoints/ (status, previews, resume state) go")
    class_prompt: str | None = _f(None, "class prompt, e.g. 'a photo of a dog'; turns on prior preservation")
    class_data: str | None = _f(None, "folder of class images; missing ones are generated with the base model and cached")
    validation_prompts: tuple[str, ...] = _f((), "prompt for previews (repeatable; default: the instance prompt)",
                                             flag="validation-prompt")
    # --- training ---
    max_train_steps: int = _f(400, "number of optimizer steps")
    learning_rate: float = _f(1e-4, "learning rate (use ~1.0 with prodigy)")
    lr_scheduler: str = _f("constant", "learning-rate schedule", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = _f(0, "warmup steps of the learning-rate schedule")
    rank: int = _f(4, "LoRA rank")
    lora_target_modules: str = _f("", "comma-separated module names of the denoiser that get the LoRA "
                                      "(default: the family's attention projections, e.g. to_q,to_k,to_v,to_out.0)")
    lora_alpha: float | None = _f(None, "LoRA alpha (scale = alpha / rank); default: equal to --rank")
    resolution: int = _f(512, "training resolution in pixels (images are resized on the short side and cropped)")
    train_batch_size: int = _f(1, "instance images per micro-batch (as many class images are added with prior preservation)")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    mixed_precision: str = _f("no", "autocast precision; the frozen weights are held in this dtype", choices=MIXED_PRECISION)
    seed: int = _f(0, "seed of the LoRA init, data order, noise and previews")
    optimizer: str = _f("adamw", "optimizer (adamw8bit needs bitsandbytes, prodigy needs prodigyopt)", choices=OPTIMIZERS)
    adam_weight_decay: float = _f(1e-2, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 turns clipping off)")
    gradient_checkpointing: bool = _f(False, "trade compute for memory in the UNet (and text encoder)")
    train_text_encoder: bool = _f(False, "also train a LoRA on the text encoder (q/k/v/out_proj)")
    snr_gamma: float | None = _f(None, "min-SNR loss weighting gamma (5.0 is the usual value); off when unset",
                                 families=("sd", "sdxl"))
    noise_offset: float = _f(0.0, "noise offset (e.g. 0.05) for darker darks / brighter brights",
                             families=("sd", "sdxl"))
    # flow matching (FLUX.1, FLUX.2 Klein, Z-Image, Qwen-Image): diffusers' DreamBooth scripts' names and defaults
    weighting_scheme: str = _f("none", "how sigmas are drawn (none: uniform; logit_normal; mode) or the loss "
                                       "weighted (sigma_sqrt, cosmap)", choices=WEIGHTING_SCHEMES,
                               families=FLOW_FAMILIES)
    logit_mean: float = _f(0.0, "mean of the logit_normal weighting scheme", families=FLOW_FAMILIES)
    logit_std: float = _f(1.0, "standard deviation of the logit_normal weighting scheme", families=FLOW_FAMILIES)
    mode_scale: float = _f(1.29, "scale of the mode weighting scheme", families=FLOW_FAMILIES)
    guidance_scale: float = _f(3.5, "guidance embedding of a guidance-distilled transformer (FLUX.1-dev), in "
                                    "training and previews", families=GUIDANCE_EMBED_FAMILIES)
    base_quantization: str = _f("none", "train on a quantized frozen transformer (and FLUX.1's T5, Qwen-Image's "
                                        "Qwen2.5-VL): nf4 or int8 "
                                        "(bitsandbytes QLoRA); the base is quantized once per host, so set it "
                                        "for the job", choices=BASE_QUANTIZATIONS, families=FLOW_FAMILIES)
    crop: str = _f("center", "how a photo becomes the training image: center (a square from the middle), face (a "
                             "square centred on the detected face(s); the middle when none is found), bucket (the "
                             "whole photo at the nearest aspect-ratio bucket of about resolution^2 pixels)",
                   choices=CROPS)
    center_crop: bool = _f(True, "fixed crop offset (--no-center-crop: drawn per step, keeping the faces inside with "
                                 "--crop face; turns latent caching off)")
    random_flip: bool = _f(False, "random horizontal flip (turns latent caching off)")
    # --- screening of the instance photos, before the base model loads (train/screen.py) ---
    screen: str = _f("warn", "what a photo failing a screening check does: warn (train on all, record findings), "
                             "drop (leave it out while --min-images remain, else fail), fail (refuse the task), "
                             "off (no screening)", choices=SCREEN_MODES)
    screen_checks: str = _f(",".join(CHECKS), "comma-separated screening checks, run cheapest first: small (under "
                                              "the resolution), duplicate, blur, faces")
    blur_threshold: float = _f(50.0, "blur check: a photo whose sharpness (variance of the Laplacian at 512 px on "
                                     "the short side) is under this is blurred; sharp photos score in the hundreds")
    duplicate_distance: int = _f(8, "duplicate check: photos whose perceptual hashes differ in at most this many of "
                                    "64 bits are near-duplicates (the largest one is kept)")
    max_faces: int = _f(1, "faces check: a photo with more faces than this is flagged (0 for a subject that is "
                           "not a person)")
    num_class_images: int = _f(100, "class images used for prior preservation")
    prior_loss_weight: float = _f(1.0, "weight of the class (prior) loss")
    class_inference_steps: int = _f(25, "sampling steps when generating missing class images")
    min_images: int = _f(1, "fewest instance images accepted (also after screening drops photos)")
    max_image_pixels: int = _f(64_000_000, "largest image (width*height) accepted; guards against decompression bombs")
    # --- previews, checkpoints, logs ---
    num_preview_images: int = _f(2, "preview images per validation prompt")
    preview_every: int = _f(100, "write previews every N steps (0: only at the end)")
    preview_inference_steps: int = _f(20, "sampling steps of a preview")
    preview_guidance_scale: float = _f(7.5, "classifier-free guidance scale of previews")
    checkpoint_every: int = _f(100, "save resume state every N steps (0: only at the end)")
    checkpoints_total_limit: int = _f(2, "resume states kept (older ones are deleted)")
    resume: bool = _f(False, "continue from the latest complete resume state in checkpoints/state")
    log_every: int = _f(10, "print a log line every N steps")
    # --- export ---
    export: str = _f("lora,kohya", f"comma-separated export formats ({', '.join(FORMATS)}; which ones a model "
                                    f"family can write: docs/exports.md); lora is always written")
    export_check: bool = _f(True, "load each exported file back, render the validation prompts and record the "
                                  "difference to the in-memory LoRA in manifest.json")
    save_dtype: str = _f("fp32", "dtype of the exported LoRA weights", choices=SAVE_DTYPES)
    # --- evaluation and quality gate (docs/quality.md; only with scorer models: --eval-models / channel eval) ---
    quality_gate: dict[str, float] = field(default_factory=dict, metadata={
        "help": "JSON object of score limits, e.g. '{\"dino\": 0.55, \"copying\": 0.95}': a minimum for "
                f"{', '.join(s for s in QUALITY_SCORES if s not in QUALITY_MAXIMA)}, a maximum for drift and "
                "copying; empty: scores are reported, not judged"})
    on_quality_fail: str = _f("keep", "what the serverless path does with a failed_quality model: keep it (the "
                                      "request becomes NEEDS_REVIEW) or retry with another seed and step count",
                              choices=ON_QUALITY_FAIL)
    eval_prompts: tuple[str, ...] = _f((), "recontextualisation prompt of the evaluation, {subject} standing for the "
                                           "subject (repeatable; default: on the beach, in the snow)",
                                       flag="eval-prompt")
    eval_drift_prompts: tuple[str, ...] = _f((), "prompt not about the subject, rendered with and without the LoRA; "
                                                 "{class} stands for the class noun (repeatable; default: in a "
                                                 "kitchen, walking in a park)", flag="eval-drift-prompt")
    eval_subject: str = _f("", "the words of the instance prompt naming the subject (default: the instance prompt "
                               "without a leading 'a photo of', e.g. 'sks dog')")
    eval_rare_token: str = _f("", "the rare token, left out of CLIP-T's text (default: the subject's first word "
                                  "when it has more than one)")
    eval_seed: int = _f(0, "seed of the evaluation images (independent of --seed: every task gets the same set)")
    eval_inference_steps: int = _f(0, "sampling steps of an evaluation image (0: as the previews, "
                                      "--preview-inference-steps)")
    eval_images_per_prompt: int = _f(1, "evaluation images per prompt")
    triton_env: str = _f(TRITON_ENV_DEFAULT, "EXECUTION_ENV_PATH written into the triton "
                         "archive's config.pbtxt: the serving env on the Triton host (docs/exports.md); 'none': the "
                         "serving image's own Python")

    def __post_init__(self) -> None:
        _validate(self, "config")
        _remember(self, given=frozenset())  # the constructor below records its arguments

    @property
    def given(self) -> frozenset[str]:
        """The settings the caller set (keys of ``from_dict``, flags, job or task hyperparameters):
        a model family's recipe never overrides them."""
        return self.__dict__["_given"]

    @property
    def recipe(self) -> Any:
        """What ``train.recipes.resolve`` filled in from the family's recipe (a ``RecipeUse``), or None."""
        return self.__dict__["_recipe"]

    @property
    def alpha(self) -> float:
        """The LoRA alpha actually used (``lora_alpha`` or, when unset, the rank)."""
        return float(self.rank if self.lora_alpha is None else self.lora_alpha)

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """``lora_target_modules`` as names; empty = the family's default targets."""
        return tuple(n.strip() for n in self.lora_target_modules.split(",") if n.strip())

    @property
    def export_formats(self) -> tuple[str, ...]:
        names = tuple(n.strip() for n in self.export.split(",") if n.strip())
        return names if "lora" in names else ("lora",) + names

    @property
    def checks(self) -> tuple[str, ...]:
        """``screen_checks`` as names, in the order they run (cheapest first)."""
        names = {n.strip() for n in self.screen_checks.split(",") if n.strip()}
        return tuple(c for c in CHECKS if c in names)

    @property
    def prior_preservation(self) -> bool:
        return bool(self.class_prompt)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build a config from typed values or SageMaker strings; every error names ``source``."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        reject_unknown(values, fields, source=source)
        kwargs = {k: convert_value(fields[k], v, source) for k, v in values.items()}
        return cls._checked(source, **kwargs)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with ``changes`` applied (typed values); they count as given."""
        new = self.from_dict({**dataclasses.asdict(self), **changes}, source="replace()")
        recipe = self.recipe.without(changes) if self.recipe is not None else None
        return _remember(new, given=self.given | frozenset(changes), recipe=recipe)

    def filled(self, values: Mapping[str, Any], recipe: Any, *, source: str) -> "TrainConfig":
        """A validated copy with ``values`` for the settings not given (a family's recipe; only
        ``train.recipes.resolve`` calls this), remembering ``recipe``."""
        taken = {k: v for k, v in values.items() if k not in self.given}
        new = self.from_dict({**dataclasses.asdict(self), **taken}, source=source)
        return _remember(new, given=self.given, recipe=recipe)

    @classmethod
    def _checked(cls, source: str, **kwargs: Any) -> "TrainConfig":
        # Build without the generic check, then check naming the real source.
        obj = object.__new__(cls)
        for f in dataclasses.fields(cls):
            object.__setattr__(obj, f.name, kwargs.get(f.name, default_of(f)))
        _validate(obj, source)
        return _remember(obj, given=frozenset(kwargs))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("validation_prompts", "eval_prompts", "eval_drift_prompts"):
            d[name] = list(getattr(self, name))
        return d


def _recording_init(init):
    """``TrainConfig(...)`` built in code gives exactly the settings it was called with."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        _remember(self, given=frozenset(names[:len(args)]) | frozenset(kwargs))
    return __init__


TrainConfig.__init__ = _recording_init(TrainConfig.__init__)


def default_of(f: dataclasses.Field) -> Any:
    """A setting's default (a ``default_factory`` called)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _remember(cfg: TrainConfig, *, given: frozenset[str], recipe: Any = None) -> TrainConfig:
    """Record (outside the compared fields) what the caller set and what a recipe filled in."""
    object.__setattr__(cfg, "_given", given)
    object.__setattr__(cfg, "_recipe", recipe)
    return cfg


def flag_name(name: str) -> str:
    """The CLI flag of a field: ``max_train_steps`` -> ``--max-train-steps``."""
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    return "--" + f.metadata.get("flag", name.replace("_", "-"))


def _where(name: str, source: str) -> str:
    return f"{source}: {name} ({flag_name(name)})"


# --- conversion of SageMaker strings by declared type -------------------------------------

_TYPES = typing.get_type_hints(TrainConfig)


def convert_value(f: dataclasses.Field, value: Any, source: str) -> Any:
    tp = _TYPES[f.name]
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if optional else tp
    if isinstance(value, str):
        value = unquote(value)
        if optional and value.strip().lower() in ("", "none", "null"):
            return None
    elif value is None:
        if optional:
            return None
        raise ConfigError(f"{_where(f.name, source)}: must not be empty")
    try:
        return decode(value, base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{_where(f.name, source)}: {shown(value)} is not a valid {_type_word(base)} ({exc})") from None


def _type_word(tp: Any) -> str:
    if typing.get_origin(tp) is dict:
        return "JSON object"
    return {int: "integer", float: "number", bool: "boolean (true/false)", str: "string"}.get(tp, "list of strings")


# --- validation ---------------------------------------------------------------------------

def _validate(cfg: TrainConfig, source: str) -> None:
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{_where(f.name, source)}: {shown(value)} is not one of {', '.join(choices)}")
    positive = ("max_train_steps", "rank", "resolution", "train_batch_size", "gradient_accumulation_steps",
                "num_preview_images", "preview_inference_steps", "class_inference_steps", "min_images",
                "max_image_pixels", "checkpoints_total_limit", "log_every", "eval_images_per_prompt")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{_where(name, source)}: must be at least 1, got {getattr(cfg, name)}")
    at_least_zero = ("lr_warmup_steps", "adam_weight_decay", "max_grad_norm", "noise_offset", "prior_loss_weight",
                     "preview_every", "checkpoint_every", "seed", "preview_guidance_scale", "eval_seed",
                     "eval_inference_steps", "blur_threshold", "duplicate_distance", "max_faces")
    for name in at_least_zero:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{_where(name, source)}: must be 0 or more, got {getattr(cfg, name)}")
    if cfg.class_prompt and cfg.num_class_images < 1:
        raise ConfigError(f"{_where('num_class_images', source)}: must be at least 1 with a class prompt")
    if not cfg.learning_rate > 0:
        raise ConfigError(f"{_where('learning_rate', source)}: must be greater than 0, got {cfg.learning_rate}")
    if cfg.lora_alpha is not None and not cfg.lora_alpha > 0:
        raise ConfigError(f"{_where('lora_alpha', source)}: must be greater than 0, got {cfg.lora_alpha}")
    if cfg.snr_gamma is not None and not cfg.snr_gamma > 0:
        raise ConfigError(f"{_where('snr_gamma', source)}: must be greater than 0, got {cfg.snr_gamma}")
    if cfg.resolution % 8:
        raise ConfigError(f"{_where('resolution', source)}: must be a multiple of 8, got {cfg.resolution}")
    unknown_checks = [n.strip() for n in cfg.screen_checks.split(",") if n.strip() and n.strip() not in CHECKS]
    if unknown_checks:
        raise ConfigError(f"{_where('screen_checks', source)}: unknown check(s) {', '.join(unknown_checks)}; "
                          f"valid: {', '.join(CHECKS)}")
    unknown = [n for n in cfg.export_formats if n not in FORMATS]
    if unknown:
        raise ConfigError(f"{_where('export', source)}: unknown format(s) {', '.join(map(shown_name, unknown))}; "
                          f"valid: {', '.join(FORMATS)}")
    problem = gate_problem(cfg.quality_gate)
    if problem:
        raise ConfigError(f"{_where('quality_gate', source)}: {problem}")
    if cfg.optimizer == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
        raise ConfigError(f"{_where('optimizer', source)}: 'prodigy' needs the prodigyopt package, which is not "
                          f"installed; use one of adamw, adamw8bit or `pip install prodigyopt`")


def family_settings_problems(cfg: TrainConfig, family) -> list[str]:
    """Settings changed from their default that ``family`` does not understand: a field with
    ``families=(...)`` metadata is only valid for those families."""
    problems = []
    for f in dataclasses.fields(cfg):
        allowed = f.metadata.get("families")
        if allowed and family.name not in allowed and getattr(cfg, f.name) != default_of(f):
            problems.append(f"{f.name} ({flag_name(f.name)}) is a setting of {', '.join(allowed)} models; "
                            f"the base model is {family.name} ({family.title}), which does not use it")
    return problems


def changed_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that differ from their defaults, paths left out (status.json's
    ``settings``: what a person reading the task's report needs to know was asked for)."""
    paths = ("pretrained_model", "instance_data", "output_dir", "class_data")
    values = cfg.to_dict()
    return {f.name: values[f.name] for f in dataclasses.fields(cfg)
            if f.name not in paths and getattr(cfg, f.name) != default_of(f)}


def required_missing(cfg: TrainConfig, names: tuple[str, ...]) -> list[str]:
    """The flags of ``names`` that are still empty (for the CLI, where paths are required)."""
    return [flag_name(n) for n in names if not getattr(cfg, n)]


# Names that may come from job/task hyperparameters: everything except the paths and prompts
# that the container derives from its channels and the task list.
HYPERPARAMETER_NAMES: frozenset[str] = frozenset(
    f.name for f in dataclasses.fields(TrainConfig)
    if f.name not in {"pretrained_model", "instance_data", "instance_prompt", "output_dir",
                      "class_prompt", "class_data", "validation_prompts"}
)
