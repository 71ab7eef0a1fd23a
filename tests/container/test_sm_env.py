"""Reading the /opt/ml contract: both resourceconfig shapes, raw hyperparameters, the task file."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from container.env import find_tasks_file, read_env
from container.errors import ContractError
from opt_ml import ROOT, make_tree, sdk_encode


@pytest.mark.parametrize("local_mode", [False, True], ids=["sagemaker", "local-mode"])
def test_both_resourceconfig_shapes_give_the_same_host_index(tmp_path, local_mode):
    make_tree(tmp_path, tasks=[], host="algo-3", hosts=["algo-1", "algo-2", "algo-3"], local_mode=local_mode)
    env = read_env(tmp_path)
    assert env.hosts == ("algo-1", "algo-2", "algo-3")
    assert env.current_host == "algo-3" and env.host_index == 2
    assert env.output_data_dir == tmp_path / "output" / "data" / "algo-3"
    assert env.network_interface == "eth0"


def test_hyperparameters_stay_raw_strings_and_reserved_names_are_dropped(tmp_path):
    hp = {**sdk_encode({"max_train_steps": "400", "seed": 7}), "sagemaker_region": '"us-east-1"',
          "sagemaker_job_name": '"job-1"'}
    make_tree(tmp_path, tasks=[], hyperparameters=hp)
    env = read_env(tmp_path)
    # Environment would decode these to ints; the container keeps the strings for TrainConfig.
    assert env.hyperparameters == {"max_train_steps": '"400"', "seed": "7"}


def test_a_current_host_missing_from_hosts_is_a_contract_error(tmp_path):
    make_tree(tmp_path, tasks=[])
    (tmp_path / "input/config/resourceconfig.json").write_text(json.dumps({"current_host": "algo-9", "hosts": ["algo-1"]}))
    with pytest.raises(ContractError, match="algo-9"):
        read_env(tmp_path)


def test_a_hand_made_tree_without_config_files_is_one_host_with_its_folders_as_channels(tmp_path):
    (tmp_path / "input/data/tasks").mkdir(parents=True)
    (tmp_path / "input/data/model").mkdir()
    env = read_env(tmp_path)
    assert env.hosts == ("algo-1",) and set(env.channels) == {"model", "tasks"}


def test_the_task_file_is_found_whatever_its_name_when_alone(tmp_path):
    (tmp_path / "batch-2024.jsonl").write_text("{}")
    assert find_tasks_file(tmp_path).name == "batch-2024.jsonl"
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(ContractError, match="exactly one"):
        find_tasks_file(tmp_path)
    (tmp_path / "tasks.jsonl").write_text("{}")
    assert find_tasks_file(tmp_path).name == "tasks.jsonl"


def test_train_help_is_fast_and_imports_no_torch():
    code = ("import sys, runpy; sys.argv=['train','--help']\n"
            "try:\n  runpy.run_module('container', run_name='__main__')\nexcept SystemExit: pass\n"
            "heavy=[m for m in ('torch','diffusers','transformers','sagemaker_training') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "usage: train" in out.stdout
    assert "HEAVY []" in out.stdout
    assert time.monotonic() - t0 < 10
