"""fanout costs and fits a task by its family's recipe without importing train: its copy
(fanout.families.RECIPES) must say what train's recipes say, and every recipe must fit the
instance type the project launches by default (a task that sets nothing must not be refused)."""

from __future__ import annotations

import pytest

from fanout.demand import _NAMES, task_settings
from fanout.families import FAMILIES
from fanout.fit import fit_problem
from fanout.instances import instance_type
from fanout.plan import PlanConfig
from fanout.request import LaunchConfig
from fanout.tasks import TaskSpec
from train.families import all_families
from train.recipes import recipe_for

# The settings fanout reads (a task's time and its GPU memory).
READ = {name for name, _ in _NAMES.values()}
# fanout cannot tell FLUX.1-dev from -schnell by model_index.json: it costs FLUX.1 as -dev.
TRAIN_VARIANT = {("flux", ""): "dev"}


def variants():
    for family in all_families():
        for variant in FAMILIES[family.name].variants:
            yield family.name, variant


@pytest.mark.parametrize("family, variant", list(variants()))
def test_fanouts_copy_of_each_recipe_is_trains(family, variant):
    from train.families import family_named

    train_variant = TRAIN_VARIANT.get((family, variant), variant)
    theirs = {k: v for k, v in recipe_for(family_named(family), train_variant).items() if k in READ}
    assert FAMILIES[family].defaults_for(variant) == theirs, (
        f"fanout/families.py RECIPES/VARIANT_RECIPES of {family}/{variant} differ from train's recipe: "
        "copy train/families' recipe values into it")


@pytest.mark.parametrize("family, variant", list(variants()))
def test_a_task_that_sets_nothing_fits_the_default_instance_type(family, variant):
    spec, instance = FAMILIES[family], instance_type(LaunchConfig.instance_type)
    settings = task_settings(TaskSpec("t", "x", "a photo of sks dog"), {}, spec, PlanConfig(), variant)
    assert fit_problem(spec, instance, settings) is None
