"""Aspect-ratio buckets: about resolution^2 pixels at the model's side multiple, the nearest
aspect for each photo, batches of one bucket in an order that is a pure function of
(seed, step), non-square photos trained whole, and exact resume after SIGKILL with buckets on."""

from __future__ import annotations

import math

import pytest
from photo_corpus import photo
from train_helpers import lora_tensors, max_abs_diff, sigkill_at_state

from train import crops
from train.crops import bucket_batch, bucket_sizes, nearest_bucket

STEPS = 6
SHAPES = {"wide-0.png": ("coffee", (72, 48)), "wide-1.png": ("chelsea", (75, 50)), "wide-2.png": ("rocket", (72, 48)),
          "tall-0.png": ("astronaut", (48, 72)), "tall-1.png": ("camera", (50, 75))}


@pytest.mark.parametrize("resolution, multiple", [(512, 64), (1024, 32), (1024, 16), (32, 4)])
def test_buckets_hold_about_the_same_pixels_at_the_models_side_multiple(resolution, multiple):
    sizes = bucket_sizes(resolution, multiple)
    assert (resolution, resolution) in sizes and len(sizes) >= 5
    for h, w in sizes:
        assert h % multiple == 0 and w % multiple == 0
        assert 0.5 <= w / h <= 2.0
        assert abs(h * w / resolution**2 - 1) <= 0.15, (h, w)
    assert nearest_bucket(4032, 3024, sizes)[1] > nearest_bucket(4032, 3024, sizes)[0], "a 4:3 photo: landscape"
    h, w = nearest_bucket(1080, 1920, sizes)
    assert h > w and abs(math.log((h / w) / (1920 / 1080))) < 0.2, "a 9:16 phone video frame: tall, close to it"


def test_batches_hold_one_bucket_cover_every_image_each_epoch_and_depend_only_on_seed_and_step():
    sizes = [(24, 40)] * 5 + [(40, 24)] * 3 + [(32, 32)]
    batches = [bucket_batch(7, "instance", step, 2, sizes) for step in range(7)]  # 3 + 2 + 1 batches + 1
    epoch = batches[:6]
    assert all(len({sizes[i] for i in b}) == 1 for b in batches), "a batch never mixes buckets"
    assert set(i for b in epoch for i in b) == set(range(9)), "every image is seen each epoch"
    crops._epoch_batches.cache_clear()   # recomputed from nothing (a resumed process): the same
    assert [bucket_batch(7, "instance", step, 2, sizes) for step in range(7)] == batches
    assert [bucket_batch(8, "instance", step, 2, sizes) for step in range(6)] != epoch


def _photos(folder):
    folder.mkdir(parents=True)
    for name, (source, size) in SHAPES.items():
        photo(source).resize(size).save(folder / name)
    return folder


def cli_args(model, data, out):
    return ["--pretrained-model", str(model), "--instance-data", str(data), "--instance-prompt", "a photo of sks toy",
            "--output-dir", str(out), "--resolution", "32", "--crop", "bucket", "--train-batch-size", "2",
            "--gradient-accumulation-steps", "2", "--max-train-steps", str(STEPS), "--checkpoint-every", "2",
            "--preview-every", "0", "--learning-rate", "5e-3", "--lr-scheduler", "cosine", "--export", "lora",
            "--no-export-check", "--log-every", "1"]


@pytest.mark.slow
def test_non_square_photos_train_whole_and_resume_after_sigkill_is_exact(base, tiny_model, tmp_path, capsys):
    import torch

    from train.cli import config_from_args
    from train.task import run_task

    data = _photos(tmp_path / "photos")
    straight = tmp_path / "straight"
    cfg, _ = config_from_args(cli_args(tiny_model, data, straight))
    seen = []

    def record(module, args):
        if torch.is_grad_enabled():      # training steps, not the preview at the end
            seen.append(tuple(args[0].shape))

    hook = base.unet.register_forward_pre_hook(record)
    try:
        result = run_task(base, cfg, model_dir=straight / "model", checkpoint_dir=straight / "checkpoints")
    finally:
        hook.remove()
    assert result.state == "completed"
    # Each photo at the bucket nearest its aspect (latents of the tiny VAE: half the pixels),
    # batches of two from one bucket, never a square.
    buckets = {nearest_bucket(w, h, bucket_sizes(32, base.family.size_multiple(base))) for _, (w, h) in SHAPES.values()}
    assert {s[2:] for s in seen} == {(h // 2, w // 2) for h, w in buckets} and len(buckets) == 2
    assert all(s[0] == 2 and s[2] != s[3] for s in seen)

    # A spot interruption: `python -m train` killed at once when step 4's state exists; the
    # warm worker's resume (run_task with resume, in this process) finishes it.
    killed = tmp_path / "killed"
    sigkill_at_state(cli_args(tiny_model, data, killed), killed, step=4)
    assert not (killed / "model" / "pytorch_lora_weights.safetensors").exists()
    cfg, _ = config_from_args(cli_args(tiny_model, data, killed) + ["--resume"])
    run_task(base, cfg, model_dir=killed / "model", checkpoint_dir=killed / "checkpoints")
    assert "resumed from" in capsys.readouterr().out
    assert max_abs_diff(lora_tensors(straight / "model"), lora_tensors(killed / "model")) <= 1e-5
