"""Recipes: what a task that sets nothing trains with, per family and variant, and that a value
the task, the job or a flag sets always wins (train/recipes.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from train.config import HYPERPARAMETER_NAMES, TrainConfig
from train.families import all_families, family_named
from train.recipes import Device, recipe_for, resolve, source_of

ROOT = Path(__file__).resolve().parents[2]
GPU = Device("cuda", bf16=True)
OLD_GPU = Device("cuda", bf16=False)
CPU = Device("cpu")
VARIANTS = [(f.name, v) for f in all_families() for v in (tuple(f.variant_recipes) or ("",))]


@pytest.mark.parametrize("family,variant", VARIANTS)
def test_every_shipped_recipe_is_a_sourced_valid_setting_its_family_accepts(family, variant):
    fam = family_named(family)
    recipe = recipe_for(fam, variant)
    assert {"mixed_precision", "rank", "learning_rate", "optimizer", "max_train_steps", "resolution",
            "preview_inference_steps", "preview_guidance_scale"} <= set(recipe), "the issue's settings, every family"
    assert set(recipe) <= HYPERPARAMETER_NAMES, set(recipe) - HYPERPARAMETER_NAMES
    missing = [k for k in recipe if len(source_of(fam, variant, k)) < 20]
    assert not missing, f"{family}/{variant}: no source for {missing}"
    TrainConfig.from_dict(recipe, source=f"{family} recipe")  # every value passes TrainConfig's checks
    for device in (GPU, CPU):
        fam.check_config(resolve(TrainConfig(), fam, variant, device=device), source=f"{family} recipe")


@pytest.mark.parametrize("family,variant", VARIANTS)
def test_docs_list_every_recipe_value(family, variant):
    """docs/families.md's recipe tables say what the code does (one row per setting)."""
    text = (ROOT / "docs" / "families.md").read_text()
    section = text[text.index(f"### Recipe: `{family}`"):]
    section = re.split(r"\n#{2,3} ", section[1:])[0]  # up to the next heading
    for name, value in recipe_for(family_named(family), variant).items():
        cell = f"`{str(value).lower() if isinstance(value, bool) else f'{value:g}' if isinstance(value, float) else value}`"
        rows = re.findall(rf"^\| `{name}` \|([^\n]*)$", section, re.M)
        assert any(cell in row for row in rows), f"docs/families.md, {family}: `{name}` should say {cell}"


@pytest.mark.parametrize("family,variant", VARIANTS)
def test_a_task_that_sets_nothing_gets_its_family_recipe(family, variant):
    fam = family_named(family)
    recipe = recipe_for(fam, variant)
    cfg = resolve(TrainConfig.from_dict({}), fam, variant, device=GPU)
    assert {k: getattr(cfg, k) for k in recipe} == recipe
    assert cfg.recipe.values == recipe and cfg.recipe.overridden == () and cfg.recipe.variant == variant
    assert set(cfg.recipe.sources) == set(recipe)
    # The machine decides the two memory and precision settings: bf16 only where the GPU has it.
    assert resolve(TrainConfig(), fam, variant, device=OLD_GPU).mixed_precision == "fp16"
    on_cpu = resolve(TrainConfig(), fam, variant, device=CPU)
    assert (on_cpu.mixed_precision, on_cpu.base_quantization) == ("no", "none")
    assert "this cpu gets no" in on_cpu.recipe.sources["mixed_precision"]


def test_the_recipes_differ_where_the_models_do():
    def resolved(family, variant=""):
        return resolve(TrainConfig(), family_named(family), variant, device=GPU)

    sd, flux_dev, schnell = resolved("sd"), resolved("flux", "dev"), resolved("flux", "schnell")
    base, distilled = resolved("flux2-klein", "base"), resolved("flux2-klein", "distilled")
    assert (sd.resolution, flux_dev.resolution, base.resolution) == (512, 1024, 1024)
    # FLUX.1-dev does not fit 24 GB in bf16: its recipe quantizes; klein 4B fits unquantized.
    assert (flux_dev.base_quantization, base.base_quantization) == ("nf4", "none")
    # Previews: distilled models sample in a few steps without guidance, the others with it.
    assert (distilled.preview_inference_steps, distilled.preview_guidance_scale) == (4, 1.0)
    assert (base.preview_inference_steps, base.preview_guidance_scale) == (50, 4.0)
    assert (schnell.preview_inference_steps, schnell.preview_guidance_scale) == (4, 0.0)
    assert (flux_dev.guidance_scale, flux_dev.preview_guidance_scale) == (1.0, 3.5)
    assert distilled.recipe.warning and "FLUX.2-klein-base-4B" in distilled.recipe.warning
    assert base.recipe.warning is None and sd.recipe.warning is None


def test_a_value_the_task_or_job_sets_wins_even_when_it_is_the_generic_default():
    from container.taskconfig import task_train_config
    from fanout.tasks import parse_tasks

    klein = family_named("flux2-klein")
    # rank 4 and 400 steps are TrainConfig's own defaults: set explicitly, they still win.
    cfg = resolve(TrainConfig.from_dict({"rank": "4", "max_train_steps": "400"}), klein, "base", device=GPU)
    assert (cfg.rank, cfg.max_train_steps, cfg.resolution) == (4, 400, 1024)
    assert cfg.recipe.overridden == ("max_train_steps", "rank") and "rank" not in cfg.recipe.values
    assert cfg.recipe.to_manifest()["set_by_task_or_job"] == ["max_train_steps", "rank"]
    # Job and task hyperparameters both count as set (the container's precedence is unchanged).
    [task] = parse_tasks('{"task_id": "t", "instance_data": "a", "instance_prompt": "p", '
                         '"hyperparameters": {"resolution": "64"}}')
    built = task_train_config(task, job_hp={"rank": "\"8\""}, model_channel=Path("/m"), images_channel=Path("/i"),
                              class_channel=None, instance_data_dir=Path("/i/a"), output_dir=Path("/o"))
    task_cfg = resolve(built, klein, "base", device=GPU)
    assert (task_cfg.rank, task_cfg.resolution, task_cfg.max_train_steps) == (8, 64, 1000)
    # A setting changed afterwards is the caller's, no longer the recipe's.
    changed = task_cfg.replace(max_train_steps=10)
    assert "max_train_steps" not in changed.recipe.values and "max_train_steps" in changed.recipe.overridden


def test_choosing_prodigy_without_a_learning_rate_gets_prodigys_own():
    cfg = resolve(TrainConfig.from_dict({"optimizer": "prodigy"}), family_named("sdxl"), device=GPU)
    assert cfg.learning_rate == 1.0 and "prodigy" in cfg.recipe.sources["learning_rate"]
    kept = resolve(TrainConfig.from_dict({"optimizer": "prodigy", "learning_rate": 0.5}), family_named("sdxl"), device=GPU)
    assert kept.learning_rate == 0.5


def test_the_folder_says_which_variant_it_is(tiny_flow_models, tiny_klein_distilled, tmp_path):
    from train.families import read_model_index

    klein, flux = family_named("flux2-klein"), family_named("flux")
    assert klein.detect_variant(tiny_flow_models["flux2-klein"], read_model_index(tiny_flow_models["flux2-klein"])) == "base"
    assert klein.detect_variant(tiny_klein_distilled, read_model_index(tiny_klein_distilled)) == "distilled"
    # A Base folder saved before diffusers knew the flag has none: the pipeline samples it with CFG too.
    assert klein.detect_variant(tmp_path, {"_class_name": "Flux2KleinPipeline"}) == "base"
    assert flux.detect_variant(tiny_flow_models["flux"], {}) == "dev"
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": False}))
    assert flux.detect_variant(tmp_path, {}) == "schnell"


def test_the_cli_fills_what_no_flag_sets_from_the_base_folders_recipe(tiny_flow_models, demo_data, tmp_path):
    from train.cli import config_from_args

    args = ["--pretrained-model", str(tiny_flow_models["flux2-klein"]), "--instance-data", str(demo_data / "instance"),
            "--instance-prompt", "a photo of sks toy", "--output-dir", str(tmp_path), "--rank", "8"]
    cfg, _ = config_from_args(args)
    assert (cfg.rank, cfg.resolution, cfg.optimizer, cfg.preview_inference_steps) == (8, 1024, "adamw8bit", 50)
    assert cfg.recipe.name == "flux2-klein/base" and cfg.recipe.overridden == ("rank",)
    # Through the container's trainer: the same resolution, for the job's config too.
    from train.api import LocalTrainer

    job = LocalTrainer().check_config(TrainConfig.from_dict({"max_train_steps": "5"}), tiny_flow_models["flux2-klein"],
                                      source="hyperparameters.json")
    assert (job.max_train_steps, job.rank, job.recipe.name) == (5, 32, "flux2-klein/base")
    assert job.mixed_precision == Device.current().precision("bf16")  # "no" on this CPU
