"""Z-Image and Qwen-Image runs killed with SIGKILL and resumed end with the LoRA of an
uninterrupted run (CPU fp32, max abs diff <= 1e-5): the flow-matching draws are a function of
(seed, step), and the LoRA, optimizer, schedule and RNG states are restored. Qwen-Image runs on
an NF4 base with random flips (a fresh posterior sample every step)."""

from __future__ import annotations

import pytest
from train_helpers import kill_then_resume, lora_tensors, max_abs_diff

STEPS = 6
SETTINGS = dict(resolution=32, max_train_steps=STEPS, checkpoint_every=2, preview_every=0, learning_rate=5e-3,
                lora_alpha=8.0, random_flip=True, gradient_accumulation_steps=2, lr_scheduler="cosine",
                export_check=False, export="lora", log_every=1, rank=4, optimizer="adamw", mixed_precision="no",
                lr_warmup_steps=0, gradient_checkpointing=False)  # stated, not left to the GPU recipes
EXTRA = {"z-image": dict(weighting_scheme="logit_normal"),
         "qwen-image": dict(weighting_scheme="mode", base_quantization="nf4")}


def cli_args(model, demo_data, out, family):
    args = ["--pretrained-model", str(model), "--instance-data", str(demo_data / "instance"),
            "--instance-prompt", "a photo of sks toy", "--output-dir", str(out)]
    for name, value in {**SETTINGS, **EXTRA[family]}.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + name.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(EXTRA))
def test_sigkill_then_resume_ends_with_the_lora_of_an_uninterrupted_run(tiny_z_image, tiny_qwen_image, demo_data,
                                                                        tmp_path, family):
    from train.config import TrainConfig
    from train.pipeline import load_base
    from train.task import run_task

    model = {"z-image": tiny_z_image, "qwen-image": tiny_qwen_image}[family]
    # The uninterrupted run in this process (one torch thread, as the CLI runs below).
    cfg = TrainConfig(instance_data=str(demo_data / "instance"), instance_prompt="a photo of sks toy",
                      **SETTINGS, **EXTRA[family])
    straight = tmp_path / "straight"
    base = load_base(model, base_quantization=cfg.base_quantization)
    assert run_task(base, cfg, model_dir=straight / "model", checkpoint_dir=straight / "checkpoints").state == "completed"

    killed = tmp_path / "killed"
    kill_then_resume(cli_args(model, demo_data, killed, family), killed, step=2)
    assert max_abs_diff(lora_tensors(straight / "model"), lora_tensors(killed / "model")) <= 1e-5
