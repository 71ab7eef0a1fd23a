"""Resume: a run killed with SIGKILL and resumed ends with the same LoRA as an uninterrupted run;
a requested stop saves the state and raises Interrupted; old states are pruned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_helpers import FAST, run_cli
from train_helpers import lora_tensors, max_abs_diff, sigkill_at_state

STEPS = 8


def cli_args(tiny_model, demo_data, out: Path, *extra: str) -> list[str]:
    return ["--pretrained-model", str(tiny_model), "--instance-data", str(demo_data / "instance"),
            "--instance-prompt", "a photo of sks toy", "--output-dir", str(out), "--resolution", "32",
            "--max-train-steps", str(STEPS), "--checkpoint-every", "2", "--checkpoints-total-limit", "2",
            "--preview-every", "5", "--preview-inference-steps", "2", "--num-preview-images", "1",
            "--learning-rate", "5e-3", "--lora-alpha", "8", "--train-text-encoder", "--random-flip",
            "--no-center-crop", "--snr-gamma", "5", "--noise-offset", "0.1", "--gradient-accumulation-steps", "2",
            "--train-batch-size", "2", "--optimizer", "adamw8bit", "--lr-scheduler", "cosine",
            "--lr-warmup-steps", "2", "--gradient-checkpointing", "--no-export-check", "--export", "lora", "--log-every", "1", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_same_lora(tiny_model, demo_data, tmp_path):
    straight = tmp_path / "straight"
    done = run_cli(*cli_args(tiny_model, demo_data, straight))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"task=straight step={STEPS}/{STEPS} loss=" in done.stdout

    killed = tmp_path / "killed"
    # Kill mid-run, as soon as a state exists: mid-step, mid-save or mid-preview.
    sigkill_at_state(cli_args(tiny_model, demo_data, killed), killed, step=4)
    status = json.loads((killed / "checkpoints" / "status.json").read_text())
    assert status["state"] == "running" and status["attempts"] == 1
    assert not (killed / "model" / "pytorch_lora_weights.safetensors").exists()

    resumed = run_cli(*cli_args(tiny_model, demo_data, killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert max_abs_diff(lora_tensors(straight / "model"), lora_tensors(killed / "model")) <= 1e-5
    status = json.loads((killed / "checkpoints" / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == STEPS and status["attempts"] == 2
    # The loss curve of the killed and resumed run is the uninterrupted run's: every step once
    # (the steps the kill lost are redone, not doubled), the same losses, time carried over.
    curve = {name: [json.loads(line) for line in (run / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
             for name, run in (("straight", straight), ("killed", killed))}
    assert [r["step"] for r in curve["killed"]] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in curve["killed"]] == pytest.approx([r["loss"] for r in curve["straight"]], abs=1e-5)
    assert [r["lr"] for r in curve["killed"]] == [r["lr"] for r in curve["straight"]]
    assert set(status["timings"]) >= {"data", "encoding", "training", "previews", "export"}
    # python -m train writes the task's page too, whatever its state
    assert (killed / "checkpoints" / "report.html").is_file() and "report: " in resumed.stdout
    # Pruned to --checkpoints-total-limit, and nothing half written left behind.
    states = sorted(p.name for p in (killed / "checkpoints" / "state").iterdir())
    assert states == ["step-000006", "step-000008"]


def test_stop_request_saves_state_and_resume_matches(base, demo_data, tmp_path):
    from train.config import TrainConfig
    from train.errors import Interrupted
    from train.task import run_task

    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt="a photo of sks toy",
                      **{**FAST, "checkpoint_every": 0, "preview_every": 0}, export="lora")
    whole = run_task(base, cfg, model_dir=tmp_path / "a" / "model", checkpoint_dir=tmp_path / "a" / "ck")

    calls = []
    stop_after_two = lambda: calls.append(1) or len(calls) >= 2  # noqa: E731
    with pytest.raises(Interrupted, match="step 2"):
        run_task(base, cfg, model_dir=tmp_path / "b" / "model", checkpoint_dir=tmp_path / "b" / "ck",
                 stop_requested=stop_after_two)
    assert (tmp_path / "b" / "ck" / "state" / "step-000002" / "meta.json").is_file()
    stopped = json.loads((tmp_path / "b" / "ck" / "status.json").read_text())
    assert stopped["state"] == "interrupted" and "step 2" in stopped["error"] and stopped["finished_at"]
    assert not hasattr(base.unet, "peft_config"), "the adapter must be removed after an interrupted task"

    again = run_task(base, cfg.replace(resume=True), model_dir=tmp_path / "b" / "model",
                     checkpoint_dir=tmp_path / "b" / "ck")
    assert again.step == whole.step == FAST["max_train_steps"]
    assert max_abs_diff(lora_tensors(tmp_path / "a" / "model"), lora_tensors(tmp_path / "b" / "model")) <= 1e-6


def test_a_fresh_run_never_resumes_into_an_older_runs_state(tmp_path):
    import torch

    from train.state import complete_states, prune_states, save_state

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (2, 4, 6):
        save_state(tmp_path, step, lora={"w": torch.ones(2)}, optimizer=opt, lr_scheduler=sched, meta={})
    (tmp_path / ".tmp-step-000008-123").mkdir()          # what a kill mid-save leaves
    assert [s for s, _ in complete_states(tmp_path)] == [2, 4, 6]
    prune_states(tmp_path, keep=2)
    assert [s for s, _ in complete_states(tmp_path)] == [4, 6]
    prune_states(tmp_path, keep=0)
    assert complete_states(tmp_path) == []
