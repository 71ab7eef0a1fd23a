"""Slots: G warm workers per host, one host-local queue, faults contained to one slot's task.

Quick tests drive the host's real loop over thread slots with a stand-in trainer (dispatch
order, device faults, how many slots a host gets). The end-to-end tests run the real
container with the tiny pipeline in slot processes: a 2-host x 2-slot job through `fanout
local`, a slot process SIGKILLed twice under its task, and SIGTERM then a restart whose LoRAs
equal the uninterrupted job's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from container import entry
from container.devices import slot_devices, visible_gpus
from container.errors import JobConfigError
from container.records import read_json
from container.settings import ContainerConfig
from opt_ml import ROOT, TINY_HP, container_env, make_tree, run_local_job, sdk_encode, wait_for
from test_worker import FakeTrain, _job, _run, _summary

# -- how many slots, pinned where ---------------------------------------------------------------

def test_one_slot_per_visible_gpu_pinned_to_it_and_cpu_slots_without_a_gpu():
    four = slot_devices(None, ["0", "1", "2", "3"], threads=48)
    assert [(d.index, d.gpu, d.threads) for d in four] == [(0, "0", 12), (1, "1", 12), (2, "2", 12), (3, "3", 12)]
    assert four[2].environ()["CUDA_VISIBLE_DEVICES"] == "2" and four[2].environ()["OMP_NUM_THREADS"] == "12"
    assert [d.gpu for d in slot_devices(2, ["0", "1", "2", "3"], threads=8)] == ["0", "1"]  # set lower
    assert [(d.gpu, d.threads) for d in slot_devices(None, [], threads=2)] == [(None, 2)]  # a CPU host: one slot
    cpu = slot_devices(3, [], threads=2)  # a CPU host asked for 3: 3 CPU slots, never fewer than 1 thread
    assert [(d.gpu, d.threads) for d in cpu] == [(None, 1)] * 3 and "CUDA_VISIBLE_DEVICES" not in cpu[0].environ()
    with pytest.raises(JobConfigError, match=r"gpus_per_host=8 but this host sees 4 GPU\(s\).*at most 4"):
        slot_devices(8, ["0", "1", "2", "3"], threads=8)


def test_visible_gpus_follow_cuda_visible_devices_then_nvidia_smi_then_device_nodes(tmp_path):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == ["0"]  # CUDA stops at the first invalid entry
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({}, list_gpus=lambda: ["0", "1"]) == ["0", "1"]
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert visible_gpus({}, list_gpus=lambda: None, dev=tmp_path) == ["0", "1"]


def test_gpus_per_host_is_a_job_setting_decoded_like_sagemaker_sends_it():
    assert ContainerConfig.from_dict({}).gpus_per_host is None
    assert ContainerConfig.from_dict({"gpus_per_host": '"2"'}).gpus_per_host == 2
    assert ContainerConfig.from_dict({"gpus_per_host": "4"}).gpus_per_host == 4
    for bad in ("0", "two", "1.5"):
        with pytest.raises(JobConfigError, match="gpus_per_host"):
            ContainerConfig.from_dict({"gpus_per_host": bad})


def test_more_slots_than_gpus_fails_the_job_before_any_model_loads(tmp_path, image_root, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path / "ml"))
    base = _job(tmp_path, image_root, [{"task_id": "a", "instance_data": "alice", "instance_prompt": "p"}],
                hp={"gpus_per_host": 2, "max_train_steps": 3})
    from container.signals import StopFlag

    assert entry.run_job(base, StopFlag()) == 1  # the real host: it never starts a slot
    failure = (base / "output" / "failure").read_text()
    assert "gpus_per_host=2" in failure and "1 GPU" in failure and not (base / "checkpoints" / "a").exists()


# -- the host's loop over thread slots, stand-in trainer ----------------------------------------

class TimedTrain(FakeTrain):
    """Takes max_train_steps x 20 ms; 'fault-once' / 'fault' raise a CUDA fault the first time / always."""

    def run_task(self, base, cfg, **kw):
        what = self.behaviour.get(kw["task_id"], "ok")
        tries = self.ran.count(kw["task_id"])
        if what == "fault" or (what == "fault-once" and tries == 0):
            self.ran.append(kw["task_id"])
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        time.sleep(cfg.max_train_steps * 0.02)
        return super().run_task(base, cfg, **kw)


def _tasks(steps: dict) -> list[dict]:
    return [{"task_id": t, "instance_data": "alice", "instance_prompt": "a photo", "hyperparameters": {"max_train_steps": n}}
            for t, n in steps.items()]


def test_a_slow_task_on_one_slot_holds_no_task_behind_it(tmp_path, image_root, monkeypatch):
    base = _job(tmp_path, image_root, _tasks({"s1": 2, "s2": 2, "long": 150, "s3": 2, "s4": 2}))
    fake = TimedTrain()
    assert _run(monkeypatch, base, fake, slots=2) == 0
    summary = _summary(base)
    slot_of = {t["task_id"]: t["slot"] for t in summary["tasks"]}
    # Plan order is longest first: slot 0 takes the long task, slot 1 every short one meanwhile.
    assert slot_of == {"long": 0, "s1": 1, "s2": 1, "s3": 1, "s4": 1}
    assert summary["slots"] == 2 and summary["base_model_loads"] == 2 == fake.loads
    assert summary["makespan_seconds"] < sum(t["seconds"] for t in summary["tasks"])
    assert [p["tasks"] for p in summary["slot_processes"]] == [1, 4]


def test_a_cuda_fault_restarts_the_slot_and_runs_the_task_again_once(tmp_path, image_root, monkeypatch):
    base = _job(tmp_path, image_root, _tasks({"flaky": 5, "broken": 4, "c": 2, "d": 2}))
    fake = TimedTrain({"flaky": "fault-once", "broken": "fault"})
    assert _run(monkeypatch, base, fake, slots=2) == 0  # the failure is the task's record, not the host's
    summary = _summary(base)
    outcomes = {t["task_id"]: t for t in summary["tasks"]}
    assert {t: o["outcome"] for t, o in outcomes.items()} == {"flaky": "completed", "broken": "failed",
                                                               "c": "completed", "d": "completed"}
    assert "illegal memory access" in outcomes["flaky"]["retried_after"] and outcomes["c"]["retried_after"] is None
    assert "illegal memory access" in outcomes["broken"]["error"] and "twice" in outcomes["broken"]["error"]
    assert fake.ran.count("flaky") == 2 and fake.ran.count("broken") == 2
    assert sum(p["faults"] for p in summary["slot_processes"]) == 3
    assert sum(p["starts"] for p in summary["slot_processes"]) == 2 + 3  # a fresh process after each fault
    status = read_json(base / "checkpoints" / "broken" / "status.json")
    assert status["state"] == "failed" and status["slot"] in (0, 1)


# -- end to end: slot processes with the real tiny pipeline -------------------------------------

HP = {**TINY_HP, "export": "lora", "checkpoint_every": 2}
USERS = ("alice", "bob", "carol", "dave", "erin")
STEPS = (40, 30, 10, 8, 6, 6, 4, 4, 4, 4)  # uneven: the plan balances, the slots share
TASKS = [{"task_id": f"u{i}", "instance_data": USERS[i % 5], "instance_prompt": "a photo of sks toy",
          "hyperparameters": {"max_train_steps": n}} for i, n in enumerate(STEPS)]


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model, image_root):
    """`fanout local`: 2 hosts x 2 slots, 10 tasks (one torch thread per slot)."""
    return run_local_job(tmp_path_factory.mktemp("slots"), TASKS, model=tiny_model, images=image_root,
                         hyperparameters={**HP, "gpus_per_host": 2}, instances=2)


@pytest.mark.slow
def test_two_hosts_of_two_slots_share_the_job_and_load_each_base_once_per_slot(job):
    assert job["codes"] == {"algo-1": 0, "algo-2": 0}
    ran = {t["task_id"]: t for s in job["summaries"].values() for t in s["tasks"]}
    assert sorted(ran) == sorted(t["task_id"] for t in TASKS)
    assert all(t["outcome"] == "completed" for t in ran.values())
    for host, summary in job["summaries"].items():
        assert summary["slots"] == 2
        assert {t["slot"] for t in summary["tasks"]} == {0, 1}, host  # both slots of each host worked
        assert [(p["starts"], p["base_model_loads"]) for p in summary["slot_processes"]] == [(1, 1), (1, 1)], host
        assert summary["base_model_loads"] == 2
        one_slot = sum(t["seconds"] for t in summary["tasks"])  # the same tasks one after another
        assert 0 < summary["makespan_seconds"] < one_slot, host
    for task_id, t in ran.items():
        status = json.loads((job["W"] / "s3" / "checkpoints" / task_id / "status.json").read_text())
        assert status["slot"] == t["slot"] and status["state"] == "completed"
        manifest = json.loads((job["W"] / "s3" / "model" / task_id / "manifest.json").read_text())
        assert "slot" not in manifest  # the deliverable does not depend on the slot that made it


def _start_host(base, log, threads: int = 2):
    env = {**container_env(base), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "container"], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)


def _saved_step(base, task_id: str) -> int:
    """The step of the task's latest complete resume state (0: none yet)."""
    return max((int(p.parent.name[5:]) for p in (base / "checkpoints" / task_id / "state").glob("step-*/meta.json")),
               default=0)


def _running(base, task_id: str) -> bool:
    status = read_json(base / "checkpoints" / task_id / "status.json") or {}
    return status.get("state") == "running" and status.get("step", 0) >= 1


def _kill_slot_of(base, task_id: str, starts: int) -> None:
    """SIGKILL the slot process running ``task_id`` (its status names the slot, the summary its pid)."""
    slot = json.loads((base / "checkpoints" / task_id / "status.json").read_text())["slot"]
    record = wait_for(lambda: (lambda p: p if p["starts"] == starts else None)(
        read_json(base / "output/data/algo-1/summary.json")["slot_processes"][slot]), 30, "the slot's pid")
    os.kill(record["pid"], signal.SIGKILL)


@pytest.mark.slow
def test_a_slot_process_killed_under_its_task_fails_only_that_task(tmp_path, tiny_model, image_root):
    tasks = [{"task_id": "long", "instance_data": "alice", "instance_prompt": "a sks toy",
              "hyperparameters": {"max_train_steps": 40}},
             {"task_id": "s1", "instance_data": "bob", "instance_prompt": "a sks toy"},
             {"task_id": "s2", "instance_data": "carol", "instance_prompt": "a sks toy"}]
    base = make_tree(tmp_path / "ml", tasks=tasks, hyperparameters=sdk_encode({**HP, "gpus_per_host": 2}),
                     model=tiny_model, images=image_root)
    log_path = tmp_path / "host.log"
    with open(log_path, "w") as log:
        proc = _start_host(base, log)
        try:
            wait_for(lambda: _saved_step(base, "long") >= 4, 300, "step 4 of the long task", proc)
            _kill_slot_of(base, "long", starts=1)  # the task runs again on a fresh process, from its state
            wait_for(lambda: _saved_step(base, "long") >= 10, 300, "step 10 of the run again", proc)
            _kill_slot_of(base, "long", starts=2)  # a second death: the task fails, alone
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    summary = read_json(base / "output/data/algo-1/summary.json")
    outcomes = {t["task_id"]: t for t in summary["tasks"]}
    assert outcomes["s1"]["outcome"] == outcomes["s2"]["outcome"] == "completed"
    assert outcomes["s1"]["slot"] == outcomes["s2"]["slot"] == 1
    long = outcomes["long"]
    assert long["outcome"] == "failed" and long["slot"] == 0
    assert "SIGKILL" in long["error"] and "twice" in long["error"] and "SIGKILL" in long["retried_after"]
    assert "task=long resumed from" in out  # the run again continued from the saved state
    assert summary["slot_processes"][0]["faults"] == 2 and summary["slot_processes"][1]["faults"] == 0
    status = read_json(base / "checkpoints" / "long" / "status.json")
    assert status["state"] == "failed" and "SIGKILL" in status["error"] and status["attempts"] == 2
    assert not (base / "model" / "long").exists() and summary["state"] == "completed"
    assert not (base / "output" / "failure").exists()


@pytest.mark.slow
def test_sigterm_saves_every_slots_task_and_the_restart_ends_with_the_uninterrupted_loras(
        job, tmp_path, tiny_model, image_root):
    from safetensors.torch import load_file

    tasks = [t for t in TASKS if t["task_id"] in ("u0", "u1", "u9")]  # the job's own, same settings
    base = make_tree(tmp_path / "ml", tasks=tasks, hyperparameters=sdk_encode({**HP, "gpus_per_host": 2}),
                     model=tiny_model, images=image_root)
    with open(tmp_path / "host.log", "w") as log:
        proc = _start_host(base, log)
        try:
            wait_for(lambda: _running(base, "u0") and _running(base, "u1"), 300, "both slots training", proc)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert rc == 143, (tmp_path / "host.log").read_text()[-3000:]
    summary = read_json(base / "output/data/algo-1/summary.json")
    outcomes = {t["task_id"]: t for t in summary["tasks"]}
    assert {outcomes["u0"]["slot"], outcomes["u1"]["slot"]} == {0, 1}
    for task_id in ("u0", "u1"):
        status = read_json(base / "checkpoints" / task_id / "status.json")
        assert outcomes[task_id]["outcome"] == status["state"] == "interrupted" and status["step"] >= 1
        assert _saved_step(base, task_id) == status["step"]  # saved at the step it stopped
    assert outcomes["u9"]["outcome"] == "not_started" and "SIGTERM" in (base / "output" / "failure").read_text()

    # A fresh instance with the checkpoints back, and this time one slot: whichever slot resumes a task.
    for sub in ("model", "output"):
        shutil.rmtree(base / sub)
    config = base / "input" / "config" / "hyperparameters.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "gpus_per_host": "1"}))
    with open(tmp_path / "restart.log", "w") as log:
        assert _start_host(base, log, threads=1).wait(timeout=300) == 0
    assert "task=u1 resumed from" in (tmp_path / "restart.log").read_text()
    for task_id in ("u0", "u1", "u9"):
        alone = load_file(base / "model" / task_id / "pytorch_lora_weights.safetensors")
        in_job = load_file(job["W"] / "s3" / "model" / task_id / "pytorch_lora_weights.safetensors")
        assert alone.keys() == in_job.keys() and alone
        for name in alone:
            assert (alone[name] == in_job[name]).all(), f"{task_id}: {name} differs from the uninterrupted run"
