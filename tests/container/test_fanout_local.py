"""`fanout local` without training: the trees it writes, its validation, its S3 sync, its imports."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from fanout.local import LocalJob, add_arguments, encode_hyperparameters, run
from opt_ml import ROOT


def _job(tmp_path, instances=2, hyperparameters=None, **kw):
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "images").mkdir(exist_ok=True)
    tasks = tmp_path / "tasks.jsonl"
    if not tasks.exists():
        tasks.write_text('{"task_id": "a", "instance_data": "x", "instance_prompt": "123"}\n')
    return LocalJob(tasks=tasks, model=tmp_path / "model", images=tmp_path / "images", class_images=None,
                    instances=instances, workdir=tmp_path / "W", echo=False, hyperparameters=hyperparameters or {}, **kw)


def test_each_host_gets_a_tree_with_config_files_as_sagemaker_writes_them(tmp_path):
    job = _job(tmp_path, instances=3, hyperparameters={"max_train_steps": 50, "export": "lora"})
    job.prepare()
    config = tmp_path / "W" / "algo-2" / "input" / "config"
    rc = json.loads((config / "resourceconfig.json").read_text())
    assert rc["current_host"] == "algo-2" and rc["hosts"] == ["algo-1", "algo-2", "algo-3"]
    assert rc["instance_groups"][0]["hosts"] == rc["hosts"] and rc["network_interface_name"] == "eth0"
    assert json.loads((config / "hyperparameters.json").read_text()) == {"max_train_steps": "50", "export": '"lora"'}
    assert set(json.loads((config / "inputdataconfig.json").read_text())) == {"tasks", "model", "images"}
    assert (tmp_path / "W" / "algo-2" / "input" / "data" / "tasks" / "tasks.jsonl").is_file()


def test_both_hyperparameter_encodings_are_strings():
    assert encode_hyperparameters({"seed": 1, "prompt": "a"}, "sdk") == {"seed": "1", "prompt": '"a"'}
    assert encode_hyperparameters({"seed": 1, "prompt": "a"}, "raw") == {"seed": "1", "prompt": "a"}


def test_a_malformed_task_list_starts_no_host(tmp_path, capsys):
    (tmp_path / "tasks.jsonl").write_text('{"task_id": "a"}\n{not json\n')
    (tmp_path / "model").mkdir()
    (tmp_path / "images").mkdir()
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--tasks", str(tmp_path / "tasks.jsonl"), "--model", str(tmp_path / "model"),
         "--images", str(tmp_path / "images"), "--workdir", str(tmp_path / "W")])
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "instance_prompt" in err and "not valid JSON" in err
    assert not (tmp_path / "W" / "algo-1").exists()


def test_checkpoint_sync_uploads_new_files_only_and_never_pushes_a_restored_copy_back(tmp_path):
    job = _job(tmp_path)
    job.prepare()
    mine = tmp_path / "W" / "algo-1" / "checkpoints" / "a"
    mine.mkdir()
    (mine / "status.json").write_text('{"state": "running"}')
    (mine / ".status.json.tmp-1").write_text("half")
    assert job.sync_checkpoints() == 1 and job.sync_checkpoints() == 0
    assert not (tmp_path / "W" / "s3" / "checkpoints" / "a" / ".status.json.tmp-1").exists()
    # A restart: every host gets the prefix; algo-2's restored copy of "a" must not travel back
    # over algo-1's newer file.
    again = _job(tmp_path)
    again.prepare()
    (tmp_path / "W" / "algo-1" / "checkpoints" / "a" / "status.json").write_text('{"state": "completed"}')
    assert again.sync_checkpoints() == 1
    assert json.loads((tmp_path / "W" / "s3" / "checkpoints" / "a" / "status.json").read_text())["state"] == "completed"


def test_the_emulator_never_imports_torch():
    code = "import sys, fanout.local; print(sorted(m for m in ('torch', 'diffusers', 'train', 'container') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_gpus_per_host_becomes_the_job_hyperparameter_of_every_host(tmp_path, capsys):
    from fanout.local import _with_slots

    job = _job(tmp_path, hyperparameters=_with_slots({"max_train_steps": 5}, 2))
    job.prepare()
    for host in ("algo-1", "algo-2"):
        config = tmp_path / "W" / host / "input" / "config" / "hyperparameters.json"
        assert json.loads(config.read_text())["gpus_per_host"] == "2"
    (tmp_path / "model").mkdir(exist_ok=True)
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--tasks", str(tmp_path / "tasks.jsonl"), "--model", str(tmp_path / "model"), "--images",
         str(tmp_path / "images"), "--workdir", str(tmp_path / "W2"), "--gpus-per-host", "2",
         "--hyperparameters", '{"gpus_per_host": 4}'])
    assert run(args) == 2
    assert "--gpus-per-host 2" in capsys.readouterr().err and not (tmp_path / "W2").exists()
