"""run_task: train one DreamBooth LoRA on a loaded base model, start to finish.

``train_lora`` is the training loop and reads top to bottom: data, model, optimizer, resume,
the steps (checkpoints, previews, stop requests inside), then the final state, previews,
evaluation (train/quality/: scores and verdict, with scorer models) and export. Every
decision inside it is a small named helper. ``run_task`` wraps it with status.json
bookkeeping and always leaves the base model clean.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from train.config import TrainConfig, changed_settings
from train.data import Example, batch_indices, generator, image_files, load_images, refuse_links_out
from train.encode import Encoder
from train.errors import ConfigError, Interrupted, TrainError
from train.metrics import METRICS_NAME, MetricsLog
from train.optim import make_accelerator, make_lr_scheduler, make_optimizer
from train.pipeline import BaseModel, attach_lora, detach_lora, lora_state, trained_modules
from train.previews import write_previews
from train.prior import class_examples
from train.progress import Progress
from train.quality.evaluate import evaluate_task, relocate
from fanout.redaction import shown
from train.screen import Screening, face_boxes, screen_task
from train.state import (StatusFile, latest_state, load_state, prune_states, remove_leftovers, save_state,
                         set_rng_states)

# Settings a resume state must share with the run that continues it, or the result would differ.
RESUME_KEYS = ("seed", "rank", "lora_alpha", "train_text_encoder", "train_batch_size",
               "gradient_accumulation_steps", "optimizer", "resolution", "instance_prompt", "class_prompt",
               "lora_target_modules", "weighting_scheme", "guidance_scale", "base_quantization", "crop")


@dataclass
class TaskResult:
    state: str                         # "completed" | "failed"
    step: int
    loss: float | None
    seconds: float
    error: str | None = None


def run_task(base: BaseModel, cfg: TrainConfig, *, model_dir: Path, checkpoint_dir: Path,
             class_cache_dir: Path | None = None,
             stop_requested: Callable[[], bool] = lambda: False,
             task_id: str = "task", status_extra: Mapping[str, Any] | None = None, scorers=None) -> TaskResult:
    """Train, preview, evaluate (with ``scorers``: train.quality.load_scorers), export; status.json
    tracks it. Raises Interrupted / TrainError (status says so)."""
    t0 = time.monotonic()
    model_dir, checkpoint_dir = Path(model_dir), Path(checkpoint_dir)
    status = StatusFile(checkpoint_dir / "status.json", extra=status_extra)
    status.start(cfg.max_train_steps)
    # what the task page lists as "settings", and which of them the family's recipe gave
    status.update(settings=changed_settings(cfg), recipe=cfg.recipe.to_manifest() if cfg.recipe is not None else None)
    try:
        step, loss = train_lora(base, cfg, model_dir=model_dir, checkpoint_dir=checkpoint_dir,
                                class_cache_dir=Path(class_cache_dir or checkpoint_dir / "class_images"),
                                stop_requested=stop_requested, task_id=task_id, status=status, scorers=scorers)
    except Interrupted as exc:
        status.finish("interrupted", error=f"interrupted: {exc}")   # the next attempt resumes (running again)
        raise
    except Exception as exc:  # record every failure in status.json, then let the caller decide
        status.finish("failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        detach_lora(base)
    status.update(step=step, loss=loss)
    status.finish("completed")
    return TaskResult(state="completed", step=step, loss=loss, seconds=round(time.monotonic() - t0, 3))


def train_lora(base: BaseModel, cfg: TrainConfig, *, model_dir: Path, checkpoint_dir: Path,
               class_cache_dir: Path, stop_requested: Callable[[], bool], task_id: str,
               status: StatusFile, scorers=None) -> tuple[int, float | None]:
    import torch

    require_task_fields(cfg)
    family = base.family
    family.check_config(cfg, source=f"task {task_id!r}")  # cheap; the container checked it before loading
    require_base_quantization(base, cfg, task_id)
    log_recipe(cfg, task_id)
    # --- data: screen the photos (the container did before the base loaded: cached), read the
    # kept ones; fail on a bad image before anything is generated or attached ---
    with status.timings.phase("data"):
        screening = screen_task(cfg)
        instance = instance_examples(base, cfg, screening)
        status.update(**photo_notes(cfg, screening, instance))
        classes = class_examples(base, cfg, class_cache_dir) if cfg.prior_preservation else []

    # --- model: a fresh LoRA, its init seeded so every run of this config starts the same ---
    accelerator = make_accelerator(base, cfg)
    torch.manual_seed(cfg.seed)
    params = attach_lora(base, cfg)
    optimizer = make_optimizer(cfg, params)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, make_lr_scheduler(cfg, optimizer))
    trained = trained_modules(base, cfg)
    with status.timings.phase("encoding"):
        encoder = Encoder(base, cfg, instance + classes)

    # --- resume: the latest complete state, if asked for and present ---
    state_root, previews_root = checkpoint_dir / "state", checkpoint_dir / "previews"
    remove_leftovers(state_root)
    remove_leftovers(previews_root)
    step, loss = 0, None
    resumed_from = latest_state(state_root) if cfg.resume else None
    if not cfg.resume:
        prune_states(state_root, keep=0)  # a fresh run: an older run's states must never be resumed into it
    if resumed_from is not None:
        step, loss = restore(resumed_from, cfg, base, optimizer, lr_scheduler)
        status.timings.add(status.previous.get("timings") or {})  # this run continues their work
        print(f"task={task_id} resumed from {resumed_from} at step {step}", flush=True)
    metrics = MetricsLog(checkpoint_dir / METRICS_NAME)
    metrics.start(step)  # a resumed run drops the lines of the steps it redoes
    saved_at, previewed_at = (step if resumed_from else None), None
    status.update(step=step, loss=loss)

    def checkpoint() -> Path:
        nonlocal saved_at
        path = save_state(state_root, step, lora=lora_state(base, cfg), optimizer=optimizer,
                          lr_scheduler=lr_scheduler, meta=state_meta(cfg, loss))
        prune_states(state_root, cfg.checkpoints_total_limit)
        status.update(step=step, loss=loss, last_state=str(path))
        saved_at = step
        return path

    def preview() -> None:
        nonlocal previewed_at
        with status.timings.phase("previews"):
            write_previews(base, preview_prompts(cfg), previews_root, step, num_images=cfg.num_preview_images,
                           steps=cfg.preview_inference_steps, guidance_scale=cfg.preview_guidance_scale,
                           resolution=cfg.resolution, seed=cfg.seed)
        previewed_at = step

    # --- train ---
    progress = Progress(task_id, cfg.max_train_steps, step, cfg.log_every)
    B, GA = cfg.train_batch_size, cfg.gradient_accumulation_steps
    status.timings.begin("training")
    instance_batch, class_batch = batch_order(cfg, instance, "instance"), batch_order(cfg, classes, "class")
    try:
        while step < cfg.max_train_steps:
            micro_losses = []
            for k in range(GA):
                # Batch and noise are a function of (seed, micro-step) only: resume needs no history.
                micro = step * GA + k
                rng = generator(cfg.seed, "step", micro)
                batch = [instance[i] for i in instance_batch(micro)]
                if classes:  # prior preservation: as many class images, their loss weighted
                    batch += [classes[i] for i in class_batch(micro)]
                with accelerator.accumulate(*trained):
                    with accelerator.autocast():
                        micro_loss = batch_loss(base, cfg, encoder, batch, B, rng)
                    accelerator.backward(micro_loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    # Accelerate's wrappers only really step on the last micro-batch of a step.
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                micro_losses.append(micro_loss.detach().float().item())
            step += 1
            loss = sum(micro_losses) / len(micro_losses)
            if not torch.isfinite(torch.tensor(loss)):
                raise TrainError(f"loss became {loss} at step {step}; lower --learning-rate or use --mixed-precision no")
            lr = lr_scheduler.get_last_lr()[0]
            progress.update(step, loss, lr)
            metrics.append(step, loss, lr)
            if should_log(step, cfg):
                status.update(step=step, loss=loss)
            if should_checkpoint(step, cfg):
                checkpoint()
            if should_preview(step, cfg):
                preview()
            if stop_requested():
                path = checkpoint() if saved_at != step else state_root
                raise Interrupted(f"stop requested at step {step}; resume state saved in {path}", step=step)
    finally:
        progress.close()
        status.timings.end("training")

    # --- end: final state first (a kill during export then resumes with nothing left to train) ---
    if saved_at != step:
        with status.timings.phase("training"):
            checkpoint()
    if previewed_at != step:
        preview()
    # Scores and verdict of the trained LoRA, before export, so the manifest carries them.
    with status.timings.phase("evaluation"):
        quality = evaluate_task(base, cfg, scorers, checkpoint_dir=checkpoint_dir, step=step, task_id=task_id)
    status.update(quality=quality)
    with status.timings.phase("export"):
        export(base, cfg, model_dir, task_id=task_id, step=step, loss=loss, steps_per_second=progress.steps_per_second(),
               sections={**photo_notes(cfg, screening, instance), "quality": relocate(quality, checkpoint_dir, model_dir)})
    print(f"task={task_id} done: step={step} loss={loss} LoRA in {model_dir}, previews in {previews_root}", flush=True)
    return step, loss


# --- helpers of the loop -------------------------------------------------------------------

def instance_examples(base: BaseModel, cfg: TrainConfig, screening: Screening | None) -> list[Example]:
    """The photos screening kept, each placed by the ``crop`` setting (train/crops.py)."""
    from train.crops import Framing, side_needed

    folder = Path(cfg.instance_data)
    files = [folder / n for n in screening.kept_files] if screening is not None else None
    faces = {}
    if cfg.crop == "face" and folder.is_dir():
        chosen = files if files is not None else image_files(folder)
        refuse_links_out(folder, chosen)          # before anything is decoded
        faces = face_boxes(chosen, cfg.max_image_pixels, keep_side=side_needed(cfg.crop, cfg.resolution))
    framing = Framing(cfg.crop, cfg.resolution, base.family.size_multiple(base), faces)
    examples = load_images(folder, prompt=cfg.instance_prompt, resolution=cfg.resolution,
                           max_pixels=cfg.max_image_pixels, min_images=cfg.min_images, files=files, framing=framing)
    missing = [e.path.name for e in examples if cfg.crop == "face" and e.focus is None]
    if missing:
        print(f"note: crop=face: no face found in {', '.join(missing)}; their crops are centred", flush=True)
    return examples


def photo_notes(cfg: TrainConfig, screening: Screening | None, instance: list[Example]) -> dict[str, Any]:
    """What status.json and manifest.json say about the photos: the screening record, and with
    ``crop=face`` which photos had no face found (their crop is the centre)."""
    notes: dict[str, Any] = {}
    if screening is not None:
        notes["screening"] = screening.to_dict()
    if cfg.crop == "face":
        notes["crop"] = {"mode": "face", "no_face": [e.path.name for e in instance if e.focus is None]}
    return notes


def batch_order(cfg: TrainConfig, examples: list[Example], kind: str) -> Callable[[int], list[int]]:
    """micro-step -> example indices, a pure function of (seed, micro-step). With buckets and
    batches of several images, a batch holds images of one bucket (train/crops.py)."""
    from train.crops import bucket_batch

    B = cfg.train_batch_size
    if cfg.crop == "bucket" and B > 1:
        sizes = [e.target(cfg.resolution) for e in examples]
        return lambda micro: bucket_batch(cfg.seed, kind, micro, B, sizes)
    return lambda micro: batch_indices(cfg.seed, kind, micro, B, len(examples))


def batch_loss(base: BaseModel, cfg: TrainConfig, encoder: Encoder, batch: list[Example], n_instance: int, rng):
    """The loss of one micro-batch: images of one size go through the denoiser together (with
    buckets the instance and class halves may differ in size and go one after the other)."""
    import torch

    from train.objective import per_sample_loss, split_prior

    family, losses = base.family, []
    for part in same_size_runs(batch, cfg.resolution):
        latents, images = encoder.latents(part, rng)
        noised = family.noise(base, cfg, latents, rng)
        prompts = encoder.text([e.caption for e in part])
        pred = family.denoise(base, noised, prompts, images, cfg)
        losses.append(per_sample_loss(pred, noised))
    return split_prior(cfg, torch.cat(losses), n_instance)[0]


def same_size_runs(batch: list[Example], resolution: int) -> list[list[Example]]:
    runs: list[list[Example]] = []
    for e in batch:
        if runs and runs[-1][0].target(resolution) == e.target(resolution):
            runs[-1].append(e)
        else:
            runs.append([e])
    return runs


def should_log(step: int, cfg: TrainConfig) -> bool:
    return step % cfg.log_every == 0 or step == cfg.max_train_steps


def should_checkpoint(step: int, cfg: TrainConfig) -> bool:
    return bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0 and step < cfg.max_train_steps


def should_preview(step: int, cfg: TrainConfig) -> bool:
    return bool(cfg.preview_every) and step % cfg.preview_every == 0 and step < cfg.max_train_steps


def preview_prompts(cfg: TrainConfig) -> tuple[str, ...]:
    return cfg.validation_prompts or (cfg.instance_prompt,)


def log_recipe(cfg: TrainConfig, task_id: str) -> None:
    """Which settings came from the family's recipe, and its warning on this base (if any)."""
    if cfg.recipe is None:
        return
    print(f"task={task_id} {cfg.recipe.summary()}", flush=True)
    if cfg.recipe.warning:
        print(f"task={task_id} WARNING: {cfg.recipe.warning}", file=sys.stderr, flush=True)


def require_task_fields(cfg: TrainConfig) -> None:
    missing = [n for n in ("instance_data", "instance_prompt") if not getattr(cfg, n)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}: a task needs its images and its instance prompt")


def require_base_quantization(base: BaseModel, cfg: TrainConfig, task_id: str) -> None:
    if cfg.base_quantization != base.quantization:
        raise ConfigError(f"task {task_id!r}: base_quantization={cfg.base_quantization!r} but the base model was "
                          f"loaded with {base.quantization!r}; it is quantized once per host, so set it for the job")


def state_meta(cfg: TrainConfig, loss: float | None) -> dict[str, Any]:
    return {"loss": loss, "config": {k: getattr(cfg, k) for k in RESUME_KEYS}}


def restore(path: Path, cfg: TrainConfig, base: BaseModel, optimizer, lr_scheduler) -> tuple[int, float | None]:
    """Load LoRA weights, optimizer, LR schedule and RNG states of a resume state."""
    import torch

    state = load_state(path)
    saved = state["meta"].get("config", {})
    differ = [k for k in RESUME_KEYS if k in saved and saved[k] != getattr(cfg, k)]
    if differ:
        raise TrainError(f"{path}: cannot resume, the state was trained with different "
                         + ", ".join(f"{k}={shown(saved[k])} (now {shown(getattr(cfg, k))})" for k in differ)
                         + "; use a new output folder or the old settings")
    params = lora_state(base, cfg)
    if set(params) != set(state["lora"]):
        raise TrainError(f"{path}: the saved LoRA does not match this model's LoRA layers")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state["lora"][name].to(p.device, p.dtype))
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    set_rng_states(state["rng"])
    return int(state["meta"]["step"]), state["meta"].get("loss")


def export(base: BaseModel, cfg: TrainConfig, model_dir: Path, *, task_id: str, step: int,
           loss: float | None, steps_per_second: float, sections: Mapping[str, Any] | None = None) -> dict:
    from train.export import ExportConfig, export_model

    model_dir.mkdir(parents=True, exist_ok=True)
    return export_model(
        base.pipeline(),
        ExportConfig(formats=cfg.export_formats, save_dtype=cfg.save_dtype, drift_check=cfg.export_check,
                     drift_resolution=cfg.resolution, triton_env=cfg.triton_env,
                     # named after the task: two users' archives unpack side by side in one repository
                     triton_name=task_id, mme_name=task_id),
        model_dir,
        base_model_dir=base.path, train_text_encoder=cfg.train_text_encoder, rank=cfg.rank, family=base.family,
        lora_alpha=cfg.alpha, validation_prompts=preview_prompts(cfg), seed=cfg.seed,
        extra_manifest={"task_id": task_id, "step": step, "loss": loss, "config": cfg.to_dict(),
                        "steps_per_second": round(steps_per_second, 4),
                        **({"recipe": cfg.recipe.to_manifest()} if cfg.recipe is not None else {})},
        sections=sections,
    )
