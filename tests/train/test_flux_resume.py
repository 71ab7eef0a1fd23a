"""FLUX.1 and FLUX.2 Klein runs killed with SIGKILL and resumed end with the LoRA of an
uninterrupted run (CPU fp32, max abs diff <= 1e-5): the flow-matching draws (noise, sigmas) are
a function of (seed, step), and the optimizer, schedule and RNG states are restored."""

from __future__ import annotations

import pytest
from train_helpers import kill_then_resume, lora_tensors, max_abs_diff, run_cli

STEPS = 6
EXTRA = {"flux": ("--train-text-encoder", "--weighting-scheme", "logit_normal", "--guidance-scale", "3.5"),
         "flux2-klein": ("--weighting-scheme", "mode", "--base-quantization", "nf4")}


def cli_args(model, demo_data, out, family):
    return ["--pretrained-model", str(model), "--instance-data", str(demo_data / "instance"),
            "--instance-prompt", "a photo of sks toy", "--output-dir", str(out), "--resolution", "32",
            "--max-train-steps", str(STEPS), "--checkpoint-every", "2", "--preview-every", "0",
            "--learning-rate", "5e-3", "--lora-alpha", "8", "--random-flip", "--gradient-accumulation-steps", "2",
            "--lr-scheduler", "cosine", "--no-export-check", "--export", "lora", "--log-every", "1", *EXTRA[family]]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(EXTRA))
def test_sigkill_then_resume_ends_with_the_same_lora(tiny_flow_models, demo_data, tmp_path, family):
    model = tiny_flow_models[family]
    straight = tmp_path / "straight"
    done = run_cli(*cli_args(model, demo_data, straight, family))
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    kill_then_resume(cli_args(model, demo_data, killed, family), killed, step=2)
    assert max_abs_diff(lora_tensors(straight / "model"), lora_tensors(killed / "model")) <= 1e-5
