"""``python -m train``: one task, no AWS, no container.

Every TrainConfig field is a kebab-case flag (``max_train_steps`` -> ``--max-train-steps``),
built from the dataclass so the two can never drift apart. ``--config FILE.json`` takes the
same names in snake_case; flags override the file. Everything is validated, and the folders
are checked, before the model loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import typing
from pathlib import Path
from typing import Any

from train.config import TrainConfig, default_of, flag_name, required_missing
from train.errors import ConfigError, Interrupted, TrainError

REQUIRED = ("pretrained_model", "instance_data", "instance_prompt", "output_dir")
DEFAULT_CLASS_CACHE = Path.home() / ".cache" / "lora-fanout" / "class-images"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description="Train one DreamBooth LoRA on a diffusers "
                                "pipeline folder (SD, SDXL, FLUX.1, FLUX.2 klein); writes OUT/model and OUT/checkpoints. "
                                "Settings you leave out come from the base family's recipe (docs/families.md).")
    p.add_argument("--config", metavar="FILE.json", help="JSON object of settings (snake_case keys); flags override it")
    p.add_argument("--class-cache-dir", metavar="DIR", default=str(DEFAULT_CLASS_CACHE),
                   help="where generated class images are cached and reused (default: %(default)s)")
    p.add_argument("--task-id", help="name in log lines and status (default: the output folder's name)")
    p.add_argument("--eval-models", metavar="DIR", help="scorer models (DIR/clip, DIR/dino, optional DIR/face): "
                   "score the trained LoRA and judge it by --quality-gate (docs/quality.md); without it the "
                   "task is not evaluated")
    from train.recipes import recipe_fields

    hints = typing.get_type_hints(TrainConfig)
    from_recipe = recipe_fields()
    for f in dataclasses.fields(TrainConfig):
        tp = hints[f.name]
        default = default_of(f)
        help_text = f.metadata["help"]
        if f.metadata.get("choices"):
            help_text += f" ({'|'.join(f.metadata['choices'])})"
        if f.name in from_recipe:
            help_text += f" (default: the model family's recipe, docs/families.md; {default} where it has none)"
        elif default not in ("", None, (), {}):
            help_text += f" (default: {default})"
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if tp is bool:
            p.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(tp) is tuple:
            p.add_argument(flag_name(f.name), action="append", metavar="TEXT", **kw)
        else:
            choices = f.metadata.get("choices")
            metavar = "{" + ",".join(choices) + "}" if choices else _metavar(tp)
            p.add_argument(flag_name(f.name), metavar=metavar, **kw)
    return p


def _metavar(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    if typing.get_origin(tp) is dict:
        return "JSON"
    return {int: "N", float: "X", str: "TEXT"}.get(args[0], "VALUE")


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Parse and validate (no model loaded). Raises ConfigError naming the flag or file key."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values = read_config_file(Path(args.config))
        TrainConfig.from_dict(values, source=args.config)       # file errors name the file
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    cfg = TrainConfig.from_dict({**values, **flags}, source="command line" + (f" + {args.config}" if args.config else ""))
    missing = required_missing(cfg, REQUIRED)
    if missing:
        raise ConfigError(f"missing required setting(s): {', '.join(missing)} (as flags, or in --config)")
    check_paths(cfg)
    if args.eval_models:
        from train.quality import check_eval_models

        check_eval_models(Path(args.eval_models), source=f"--eval-models {args.eval_models}")
    from train.recipes import resolve_for_model

    # Every setting neither a flag nor the file gives comes from the base family's recipe.
    return resolve_for_model(cfg, cfg.pretrained_model), args


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--config {path}: cannot read a JSON object ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must hold a JSON object of settings, not {type(data).__name__}")
    return data


def check_paths(cfg: TrainConfig) -> None:
    """The cheap checks of the folders, so a typo fails in a second, not after the model loads."""
    from train.data import IMAGE_SUFFIXES, image_files

    model = Path(cfg.pretrained_model)
    if not (model / "model_index.json").is_file():
        raise ConfigError(f"--pretrained-model {model}: not a diffusers pipeline folder (no model_index.json)")
    from train.families import check_for_model

    # The family (from model_index.json) and the settings and formats it supports, before any load.
    check_for_model(cfg, model, source=f"--pretrained-model {model}")
    data = Path(cfg.instance_data)
    if not data.is_dir():
        raise ConfigError(f"--instance-data {data}: not a folder")
    if not image_files(data):
        raise ConfigError(f"--instance-data {data}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if cfg.class_data and not Path(cfg.class_data).is_dir():
        raise ConfigError(f"--class-data {cfg.class_data}: not a folder (leave it out to generate class images)")


def screen_photos(cfg: TrainConfig, out: Path) -> None:
    """Screen the photos before the base model loads, as the container does: a task screening
    refuses (or with a photo that cannot be read) fails in seconds, status.json saying why.
    ``run_task`` screens again and gets the same record from the cache of measurements."""
    from train.screen import screen_task
    from train.state import StatusFile

    try:
        screen_task(cfg)
    except TrainError as exc:
        status = StatusFile(out / "checkpoints" / "status.json", extra=getattr(exc, "status_fields", None))
        status.fail_unstarted(f"{type(exc).__name__}: {exc}"[:2000])
        raise


class StopFlag:
    """SIGTERM / first Ctrl-C: finish the step, save the resume state, exit. Second Ctrl-C: now."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print("stop requested: saving the resume state after this step (Ctrl-C again to quit now)",
              file=sys.stderr, flush=True)

    def __call__(self) -> bool:
        return self.requested


def quiet_library_progress_bars() -> None:
    """Our own bar and log lines are the progress; diffusers' and transformers' loading and
    sampling bars would only clutter the log (and CloudWatch)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, args = config_from_args(argv)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(cfg.output_dir)
    try:
        screen_photos(cfg, out)   # before torch and diffusers are even imported
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    quiet_library_progress_bars()
    from report import LogTail, task_ended  # stdlib until a page is written (report/)

    stop = StopFlag()
    stop.install()
    with LogTail() as tail:
        code, result = train_one(cfg, out, stop, class_cache_dir=Path(args.class_cache_dir),
                                 task_id=args.task_id or out.resolve().name, eval_models=args.eval_models)
    # The task's page, whatever its state (a failed run's shows the error and the lines before it).
    page = task_ended(out / "checkpoints", model_dir=out / "model", log_lines=tail.lines,
                      task_id=args.task_id or out.resolve().name)
    if page is not None:
        print(f"report: {page}")
    if code:
        return code
    print(f"LoRA: {out / 'model' / 'pytorch_lora_weights.safetensors'}")
    print(f"previews: {out / 'checkpoints' / 'previews'}")
    if args.eval_models:
        print(f"evaluation: {out / 'checkpoints' / 'evaluation'}")
    print(f"status: {out / 'checkpoints' / 'status.json'} ({result.step} steps, loss {result.loss})")
    return 0


def train_one(cfg: TrainConfig, out: Path, stop: StopFlag, *, class_cache_dir: Path, task_id: str,
              eval_models: str | None = None):
    """(exit code, TaskResult or None): load the base (and the scorers), run the task, say what went wrong."""
    from train.pipeline import load_base
    from train.task import run_task

    try:
        base = load_base(cfg.pretrained_model, mixed_precision=cfg.mixed_precision,
                         base_quantization=cfg.base_quantization)
        scorers = None
        if eval_models:
            from train.quality import load_scorers

            scorers = load_scorers(Path(eval_models))
        result = run_task(base, cfg, model_dir=out / "model", checkpoint_dir=out / "checkpoints",
                          class_cache_dir=class_cache_dir, stop_requested=stop, task_id=task_id, scorers=scorers)
    except Interrupted as exc:
        print(f"interrupted: {exc}; run again with --resume to continue", file=sys.stderr)
        return 130, None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, None
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1, None
    return 0, result
