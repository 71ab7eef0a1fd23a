"""The instance table, the family table and the GPU-memory fit check (pure; the CLI on files)."""

from __future__ import annotations

import json
import re

import pytest

from fanout.cli import main
from fanout.demand import memory_gib, task_settings
from fanout.errors import FamilyError, InstanceError
from fanout.families import FAMILIES, family_of_folder, family_of_index, resolve_family
from fanout.fit import fit_problem, job_fit_problems
from fanout.instances import INSTANCE_TYPES, instance_type, slots_per_host
from fanout.plan import PlanConfig
from fanout.tasks import TaskSpec

GIB_PER_GB = 1e9 / 1024 ** 3
BF16_1024 = {"mixed_precision": "bf16", "resolution": 1024, "gradient_checkpointing": True}
# the same, with the frozen base left unquantized (FLUX.1's and Qwen-Image's recipes quantize it)
UNQUANTIZED = {**BF16_1024, "base_quantization": "none"}


def settings(family: str, **hp):
    return task_settings(TaskSpec("t", "x", "a photo of sks dog"), hp, FAMILIES[family], PlanConfig())


def test_the_table_holds_the_types_the_issue_names_with_their_gpus():
    gpus = {name: t.gpus for name, t in INSTANCE_TYPES.items()}
    assert gpus["ml.g5.xlarge"] == gpus["ml.g6.xlarge"] == gpus["ml.g6e.xlarge"] == 1
    assert gpus["ml.g5.12xlarge"] == gpus["ml.g6.12xlarge"] == gpus["ml.g6e.12xlarge"] == 4
    assert gpus["ml.p4d.24xlarge"] == gpus["ml.p5.48xlarge"] == gpus["ml.g5.48xlarge"] == 8
    assert instance_type("ml.g6e.xlarge").gpu_memory_gib > 2 * instance_type("ml.g5.xlarge").gpu_memory_gib - 1
    for t in INSTANCE_TYPES.values():
        assert t.price_per_hour is None or (t.price_per_hour > 0 and "third-party" in t.price_source), t.name


def test_an_unknown_type_is_refused_naming_the_known_ones(tmp_path, capsys):
    with pytest.raises(InstanceError, match=r"'ml\.g5\.3xlarge' is not a SageMaker training instance type.*ml\.g5\.xlarge"):
        instance_type("ml.g5.3xlarge")
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"task_id": "a", "instance_data": "a", "instance_prompt": "p"}) + "\n")
    assert main(["plan", str(tasks), "-k", "1", "--instance-type", "ml.g5.3xlarge"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--instance-type: 'ml.g5.3xlarge'" in err and "ml.p5.48xlarge" in err


@pytest.mark.parametrize("value, slots", [(None, 4), ("", 4), ("auto", 4), ("2", 2), ('"3"', 3), (4, 4)])
def test_gpus_per_host_sets_the_slots_up_to_the_gpus_of_the_type(value, slots):
    assert slots_per_host(instance_type("ml.g5.12xlarge"), value) == slots


@pytest.mark.parametrize("value, message", [(8, "has 4 GPU"), (0, "at least 1"), ("two", "at least 1"), (1.5, "whole")])
def test_impossible_slot_counts_are_refused(value, message):
    with pytest.raises(InstanceError, match=message):
        slots_per_host(instance_type("ml.g5.12xlarge"), value)


# (family, hyperparameters, instance type, fits) - the settings users actually send
FIT_TABLE = [
    ("flux", UNQUANTIZED, "ml.g5.xlarge", False),                                 # the issue's example
    ("flux", {**BF16_1024, "base_quantization": "nf4"}, "ml.g5.xlarge", True),
    ("flux", {**BF16_1024, "base_quantization": "int8"}, "ml.g6.xlarge", True),
    ("flux", UNQUANTIZED, "ml.g6e.xlarge", True),
    ("flux", {}, "ml.g5.xlarge", True),                                          # its recipe: NF4 fits 24 GB
    ("flux", {"mixed_precision": "no", "base_quantization": "none", "gradient_checkpointing": False},
     "ml.g6e.12xlarge", False),                                                  # fp32, as before recipes
    ("flux", {"mixed_precision": "no", "base_quantization": "none"}, "ml.p5.48xlarge", True),
    ("flux2-klein", BF16_1024, "ml.g5.xlarge", True),                             # BFL: klein-base-4B fits 24 GB
    ("z-image", BF16_1024, "ml.g5.xlarge", True),                                 # issue 19's target
    ("z-image", {"mixed_precision": "bf16", "resolution": 1024, "gradient_checkpointing": False},
     "ml.g5.xlarge", False),                                                     # no checkpointing
    ("qwen-image", {**BF16_1024, "base_quantization": "nf4"}, "ml.g5.xlarge", True),
    ("qwen-image", UNQUANTIZED, "ml.g6e.12xlarge", False),                        # 41 GB of transformer
    ("qwen-image", UNQUANTIZED, "ml.p4de.24xlarge", True),
    ("sdxl", BF16_1024, "ml.g5.xlarge", True),
    ("sdxl", {"resolution": 1024, "mixed_precision": "no", "gradient_checkpointing": False},
     "ml.g5.xlarge", False),                                                     # fp32, no checkpointing
    ("sd", {}, "ml.g6.xlarge", True),
]


@pytest.mark.parametrize("family, hp, type_name, fits", FIT_TABLE)
def test_fit_table(family, hp, type_name, fits):
    spec, instance, s = FAMILIES[family], instance_type(type_name), settings(family, **hp)
    problem = fit_problem(spec, instance, s)
    assert (problem is None) == fits, problem
    if problem:
        need = memory_gib(spec, s).need
        assert f"needs about {need:.1f} GiB" in problem and need > instance.gpu_memory_gib
        assert f"{type_name} has {instance.gpu_memory_gib:.1f} GiB per {instance.gpu.model}" in problem
        assert f"at {s.resolution} px" in problem and f"mixed_precision={s.precision}" in problem


@pytest.mark.parametrize("family, hp, type_name, fits", [row for row in FIT_TABLE if not row[3]])
def test_every_remedy_a_refusal_names_does_fit(family, hp, type_name, fits):
    """The settings and types after 'would fit:' are real: applied, each one fits."""
    spec, instance = FAMILIES[family], instance_type(type_name)
    problem = fit_problem(spec, instance, settings(family, **hp))
    remedies = problem.split("would fit: ", 1)[1].split(", or ")
    assert remedies and remedies[0] != "no instance type this project knows"
    for remedy in remedies:
        name = remedy.split(" (")[0]
        if name.startswith("ml."):
            assert fit_problem(spec, instance_type(name), settings(family, **hp)) is None, remedy
        else:
            changes = dict(pair.split("=") for pair in name.split(" and "))
            assert fit_problem(spec, instance, settings(family, **{**hp, **changes})) is None, remedy
            assert f"about {memory_gib(spec, settings(family, **{**hp, **changes})).need:.1f} GiB" in remedy


def test_the_estimates_match_the_published_peaks_they_rest_on():
    """The table is calibrated on peer-published figures; a change that moves an estimate away
    from its own source fails here (docs/fanout.md lists each source)."""
    def gb(family, **hp):
        return memory_gib(FAMILIES[family], settings(family, **hp))

    flux_bf16 = gb("flux", **UNQUANTIZED)
    assert 24 <= flux_bf16.train / GIB_PER_GB <= 29            # HF blog flux-qlora: 26 GB, bf16 LoRA at 1024 px
    assert 9 <= gb("flux", **BF16_1024, base_quantization="nf4").need / GIB_PER_GB <= 14   # blog ~9 GB, SimpleTuner >9G
    assert 10 <= gb("flux2-klein", **BF16_1024).train / GIB_PER_GB <= 14    # SimpleTuner: klein-4b ~12 GB in bf16
    assert 40 <= gb("qwen-image", **UNQUANTIZED).train / GIB_PER_GB          # the 20 B transformer alone is 41 GB
    assert gb("sdxl", **BF16_1024).need / GIB_PER_GB < 16                  # README_sdxl: SDXL LoRA < 16 GB
    assert gb("flux", mixed_precision="no", base_quantization="none").need / GIB_PER_GB > 48   # 12 B in fp32


def test_a_thousand_tasks_with_one_bad_job_setting_give_one_line_and_an_override_its_own():
    tasks = [TaskSpec(f"t{i:04d}", f"s{i}", "a photo") for i in range(1000)]
    tasks[7] = TaskSpec("big", "s", "a photo", hyperparameters={"resolution": 2048, "gradient_checkpointing": False})
    spec, g5 = FAMILIES["flux"], instance_type("ml.g5.xlarge")
    problems = job_fit_problems(tasks, {**BF16_1024, "base_quantization": "nf4"}, spec, g5, PlanConfig(), "tasks.jsonl")
    assert len(problems) == 1 and problems[0].startswith("tasks.jsonl: task 'big' does not fit ml.g5.xlarge: ")
    assert "at 2048 px" in problems[0] and "would fit: gradient_checkpointing=true (about" in problems[0]
    problems = job_fit_problems(tasks, UNQUANTIZED, spec, g5, PlanConfig(), "tasks.jsonl")
    assert [p.split(" fit ")[0] for p in problems] == ["tasks.jsonl: 999 tasks 't0000', 't0001', 't0002', 't0003', "
                                                      "'t0004' and 994 more do not", "tasks.jsonl: task 'big' does not"]


def test_validate_and_plan_refuse_a_job_that_cannot_fit_and_accept_one_that_does(tmp_path, capsys):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps({"task_id": f"t{i}", "instance_data": "a", "instance_prompt": "p"}) + "\n"
                             for i in range(3)))
    model = tmp_path / "base"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    hp = ["--hp", "mixed_precision=bf16", "--hp", "resolution=1024", "--hp", "gradient_checkpointing=true",
          "--hp", "base_quantization=none"]
    assert main(["validate", str(tasks), "--model", str(model), *hp]) == 2
    err = capsys.readouterr().err
    assert "all 3 tasks do not fit ml.g5.xlarge" in err and "base_quantization=nf4" in err and "ml.g6e.xlarge" in err
    assert main(["plan", str(tasks), "-k", "1", "--family", "flux", *hp]) == 2
    assert "needs about" in capsys.readouterr().err
    assert main(["validate", str(tasks), "--family", "flux", "--instance-type", "ml.g6e.xlarge", *hp]) == 0
    assert "flux fits ml.g6e.xlarge: about" in capsys.readouterr().out
    assert main(["validate", str(tasks), "--model", str(model), *hp[:-2], "--hp", "base_quantization=nf4"]) == 0
    assert main(["validate", str(tasks), "--model", str(model)]) == 0        # setting nothing: FLUX.1's recipe fits


@pytest.mark.parametrize("index, family, variant", [
    ({"_class_name": "StableDiffusionPipeline"}, "sd", ""),
    ({"_class_name": "StableDiffusionXLPipeline"}, "sdxl", ""),
    ({"_class_name": "FluxPipeline"}, "flux", ""),
    ({"_class_name": "Flux2KleinPipeline", "is_distilled": True}, "flux2-klein", "distilled"),
    ({"_class_name": "Flux2KleinPipeline"}, "flux2-klein", "base"),
    ({"_class_name": "ZImagePipeline", "_variant": "turbo"}, "z-image", "turbo"),
    ({"_class_name": "ZImagePipeline"}, "z-image", "base"),
    ({"_class_name": "QwenImagePipeline"}, "qwen-image", ""),
])
def test_the_family_is_read_from_model_index_json_as_train_reads_it(index, family, variant):
    spec, found = family_of_index(index, "model_index.json")
    assert (spec.name, found) == (family, variant)


def test_where_the_family_comes_from(tmp_path):
    with pytest.raises(FamilyError, match=r"pipeline class 'WanPipeline' is not a family.*flux: FluxPipeline"):
        family_of_index({"_class_name": "WanPipeline"}, "x")
    with pytest.raises(FamilyError, match=re.escape(f"{tmp_path}/model_index.json: cannot read") + ".*pass --family"):
        family_of_folder(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    assert resolve_family("sdxl", folder=tmp_path)[0].name == "sdxl"        # an explicit family wins
    assert resolve_family("", folder=tmp_path)[0].name == "qwen-image"
    assert resolve_family("z-image/turbo") == (FAMILIES["z-image"], "turbo")
    assert resolve_family("") is None
    with pytest.raises(FamilyError, match="z-image variants are base, turbo"):
        resolve_family("z-image/lightning")
    with pytest.raises(FamilyError, match="unknown model family 'sd3'"):
        resolve_family("sd3")


def test_the_family_is_read_from_s3_with_the_client_fanout_has(aws_env):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="klein/model_index.json",
                  Body=json.dumps({"_class_name": "Flux2KleinPipeline", "is_distilled": True}).encode())
    assert resolve_family(s3=s3, model_uri="s3://models/klein/") == (FAMILIES["flux2-klein"], "distilled")
    with pytest.raises(FamilyError, match=r"s3://models/other/model_index.json: cannot read .*set the family"):
        resolve_family(s3=s3, model_uri="s3://models/other")
