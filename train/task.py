"""run_task: train one DreamBooth LoRA on a loaded base model, start to finish.

``train_lora`` is the training loop and reads top to bottom: data, model, optimizer, resume,
the steps (checkpoints, previews, stop requests inside), then the final state, previews and
export. Every decision inside it is a small named helper. ``run_task`` wraps it with
status.json bookkeeping and always leaves the base model clean.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from train.config import TrainConfig
from train.data import batch_indices, generator, load_images
from train.encode import Encoder
from train.errors import ConfigError, Interrupted, TrainError
from train.objective import weighted_loss
from train.optim import make_accelerator, make_lr_scheduler, make_optimizer
from train.pipeline import BaseModel, attach_lora, detach_lora, lora_state, trained_modules
from train.previews import write_previews
from train.prior import class_examples
from train.progress import Progress
from train.state import (StatusFile, latest_state, load_state, prune_states, remove_leftovers, save_state,
                         set_rng_states)

# Settings a resume state must share with the run that continues it, or the result would differ.
RESUME_KEYS = ("seed", "rank", "lora_alpha", "train_text_encoder", "train_batch_size",
               "gradient_accumulation_steps", "optimizer", "resolution", "instance_prompt", "class_prompt",
               "lora_target_modules", "weighting_scheme", "guidance_scale", "base_quantization")


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
             task_id: str = "task", status_extra: Mapping[str, Any] | None = None) -> TaskResult:
    """Train, preview, export; status.json tracks it. Raises Interrupted / TrainError (status says so)."""
    t0 = time.monotonic()
    model_dir, checkpoint_dir = Path(model_dir), Path(checkpoint_dir)
    status = StatusFile(checkpoint_dir / "status.json", extra=status_extra)
    status.start(cfg.max_train_steps)
    try:
        step, loss = train_lora(base, cfg, model_dir=model_dir, checkpoint_dir=checkpoint_dir,
                                class_cache_dir=Path(class_cache_dir or checkpoint_dir / "class_images"),
                                stop_requested=stop_requested, task_id=task_id, status=status)
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
               status: StatusFile) -> tuple[int, float | None]:
    import torch

    require_task_fields(cfg)
    family = base.family
    family.check_config(cfg, source=f"task {task_id!r}")  # cheap; the container checked it before loading
    require_base_quantization(base, cfg, task_id)
    # --- data: fail on a bad image before anything is generated or attached ---
    instance = load_images(cfg.instance_data, prompt=cfg.instance_prompt, resolution=cfg.resolution,
                           max_pixels=cfg.max_image_pixels, min_images=cfg.min_images)
    classes = class_examples(base, cfg, class_cache_dir) if cfg.prior_preservation else []

    # --- model: a fresh LoRA, its init seeded so every run of this config starts the same ---
    accelerator = make_accelerator(base, cfg)
    torch.manual_seed(cfg.seed)
    params = attach_lora(base, cfg)
    optimizer = make_optimizer(cfg, params)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, make_lr_scheduler(cfg, optimizer))
    trained = trained_modules(base, cfg)
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
        print(f"task={task_id} resumed from {resumed_from} at step {step}", flush=True)
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
        write_previews(base, preview_prompts(cfg), previews_root, step, num_images=cfg.num_preview_images,
                       steps=cfg.preview_inference_steps, guidance_scale=base.family.guidance_for_sampling(cfg, cfg.preview_guidance_scale),
                       resolution=cfg.resolution, seed=cfg.seed)
        previewed_at = step

    # --- train ---
    progress = Progress(task_id, cfg.max_train_steps, step, cfg.log_every)
    B, GA = cfg.train_batch_size, cfg.gradient_accumulation_steps
    try:
        while step < cfg.max_train_steps:
            micro_losses = []
            for k in range(GA):
                # Batch and noise are a function of (seed, micro-step) only: resume needs no history.
                micro = step * GA + k
                rng = generator(cfg.seed, "step", micro)
                batch = [instance[i] for i in batch_indices(cfg.seed, "instance", micro, B, len(instance))]
                if classes:  # prior preservation: as many class images, their loss weighted
                    batch += [classes[i] for i in batch_indices(cfg.seed, "class", micro, B, len(classes))]
                with accelerator.accumulate(*trained):
                    with accelerator.autocast():
                        latents, images = encoder.latents(batch, rng)
                        noised = family.noise(base, cfg, latents, rng)
                        prompts = encoder.text([e.caption for e in batch])
                        pred = family.denoise(base, noised, prompts, images, cfg)
                        micro_loss, _, _ = weighted_loss(cfg, pred, noised, n_instance=B)
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
            progress.update(step, loss, lr_scheduler.get_last_lr()[0])
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

    # --- end: final state first (a kill during export then resumes with nothing left to train) ---
    if saved_at != step:
        checkpoint()
    if previewed_at != step:
        preview()
    export(base, cfg, model_dir, task_id=task_id, step=step, loss=loss, steps_per_second=progress.steps_per_second())
    print(f"task={task_id} done: step={step} loss={loss} LoRA in {model_dir}, previews in {previews_root}", flush=True)
    return step, loss


# --- helpers of the loop -------------------------------------------------------------------

def should_log(step: int, cfg: TrainConfig) -> bool:
    return step % cfg.log_every == 0 or step == cfg.max_train_steps


def should_checkpoint(step: int, cfg: TrainConfig) -> bool:
    return bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0 and step < cfg.max_train_steps


def should_preview(step: int, cfg: TrainConfig) -> bool:
    return bool(cfg.preview_every) and step % cfg.preview_every == 0 and step < cfg.max_train_steps


def preview_prompts(cfg: TrainConfig) -> tuple[str, ...]:
    return cfg.validation_prompts or (cfg.instance_prompt,)


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
                         + ", ".join(f"{k}={saved[k]!r} (now {getattr(cfg, k)!r})" for k in differ)
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
           loss: float | None, steps_per_second: float) -> dict:
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
                        "steps_per_second": round(steps_per_second, 4)},
    )
