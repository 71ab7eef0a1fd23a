"""Helpers for the container tests (imported as `opt_ml`; conftest.py holds the fixtures): SageMaker-shaped /opt/ml trees in temp folders.

Trees are written the way SageMaker writes them (every hyperparameter a string; resourceconfig
with or without the instance-group fields) so the container reads exactly what it reads on
SageMaker.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from scripts_loader import load_script  # noqa: F401 (re-exported for the tests here)

ROOT = Path(__file__).resolve().parents[2]

# The tiny job every end-to-end test trains: small, fast, still the real code paths.
TINY_HP = {
    "max_train_steps": 4,
    "resolution": 32,
    "preview_every": 0,
    "num_preview_images": 1,
    "preview_inference_steps": 2,
    "checkpoint_every": 2,
    "log_every": 1,
}


def run_local_job(work: Path, tasks: list[dict], *, model: Path, images: Path, hyperparameters: dict,
                  instances: int = 1, env: dict | None = None, eval_models: Path | None = None) -> dict:
    """``fanout local``'s job (the real container, one process per host) over ``tasks`` in
    ``work``, with one torch thread so isolation checks can expect identical bits. Returns the
    workdir ``W``, each host's exit code and each host's summary.json. ``eval_models``: the
    optional scorer channel 'eval'."""
    from fanout.local import LocalJob

    tasks_file = work / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    extra = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)  # inherited by the host processes
    try:
        local = LocalJob(tasks=tasks_file, model=model, images=images, class_images=None, instances=instances,
                         workdir=work / "W", hyperparameters=hyperparameters, echo=False, sync_interval=1.0,
                         eval_models=eval_models)
        local.prepare()
        codes = local.run()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    w = work / "W"
    summaries = {p.parent.name: json.loads(p.read_text()) for p in (w / "s3" / "output").glob("*/summary.json")}
    return {"W": w, "codes": codes, "summaries": summaries, "tasks_file": tasks_file}


def sagemaker_resource_config(host: str, hosts: list[str]) -> dict:
    return {
        "current_host": host,
        "current_instance_type": "ml.g5.xlarge",
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.g5.xlarge",
                             "hosts": hosts}],
        "network_interface_name": "eth0",
    }


def sdk_encode(values: dict) -> dict:
    """hyperparameters.json as the SageMaker Python SDK writes it: every value JSON-encoded."""
    return {k: json.dumps(v) for k, v in values.items()}


def raw_encode(values: dict) -> dict:
    """hyperparameters.json as a raw CreateTrainingJob call writes it: bare strings."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def make_tree(base: Path, *, tasks, hyperparameters: dict | None = None, host: str = "algo-1",
              hosts: list[str] | None = None, model: Path | None = None, images: Path | None = None,
              class_images: Path | None = None, local_mode: bool = False, eval_models: Path | None = None) -> Path:
    """An /opt/ml tree at ``base``. ``tasks``: list of dicts, or the task-list text itself.

    ``hyperparameters`` are written as given (already strings: use sdk_encode/raw_encode).
    ``local_mode`` writes resourceconfig.json as SageMaker local mode does (hosts only).
    """
    hosts = hosts or [host]
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters or {}))
    rc = {"current_host": host, "hosts": hosts} if local_mode else sagemaker_resource_config(host, hosts)
    (config / "resourceconfig.json").write_text(json.dumps(rc))
    channels = {"tasks": {"TrainingInputMode": "File"}}
    data = base / "input" / "data"
    (data / "tasks").mkdir(parents=True, exist_ok=True)
    text = tasks if isinstance(tasks, str) else "".join(json.dumps(t) + "\n" for t in tasks)
    (data / "tasks" / "tasks.jsonl").write_text(text)
    for name, src in (("model", model), ("images", images), ("class", class_images), ("eval", eval_models)):
        if src is not None:
            channels[name] = {"TrainingInputMode": "File"}
            link = data / name
            if not link.exists():
                link.symlink_to(Path(src).resolve(), target_is_directory=True)
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    return base


def container_env(base: Path) -> dict:
    env = dict(os.environ)
    env["SAGEMAKER_BASE_DIR"] = str(base)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- a job killed with kill -9 and restarted (tests/container/conftest.py: restarted_job) ----------

# The kill -9 job: t2 is long and goes first on its host, so a short task on the other host is
# delivered while t2 is still mid-training, however fast the machine: the kill catches both
# kinds. t5's images were never uploaded: it fails alone, in both runs.
RESTART_TASKS = {"t1": "alice", "t2": "bob", "t3": "carol", "t4": "dave", "t5": "nobody-uploaded"}
RESTART_STEPS = {"t1": 8, "t2": 30, "t3": 8, "t4": 8, "t5": 8}



def wait_for(predicate, timeout: float, what: str, proc=None):
    """Poll ``predicate`` until it returns something true (returned); fail after ``timeout`` s,
    or as soon as ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def start_fanout_local(work: Path, tasks: Path, model: Path, images: Path, hp: dict):
    """`python -m fanout.local` in its own process group, so a test can kill the whole job like a lost fleet."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "fanout.local", "--tasks", str(tasks), "--model", str(model), "--images", str(images),
           "--instances", "2", "--workdir", str(work), "--hyperparameters", json.dumps(hp), "--quiet",
           "--sync-interval", "0.3"]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def s3_state(work: Path) -> tuple[set[str], set[str]]:
    """(tasks delivered, tasks with a resume state but not done) as the shared prefix shows them.
    Delivered is what a restart restores: ``final/`` complete as ``final.json`` lists it (the sync
    copies a folder's files before its subfolders, so final.json can be there before final/ is)."""
    from container.final import final_is_complete

    done, started = set(), set()
    for folder in (work / "s3" / "checkpoints").glob("t*"):
        try:
            status = json.loads((folder / "status.json").read_text())
        except (OSError, ValueError):
            continue
        if status.get("state") == "completed" and final_is_complete(folder):
            done.add(folder.name)
        elif list(folder.glob("state/step-*/meta.json")):
            started.add(folder.name)
    return done, started


def thread_host(env, settings, trainer, stop, *, slots: int = 1, job_hp=None, mixed_precision="no", rejected=None):
    """The host's real loop over slots that are threads around ``trainer`` (no processes):
    what the host does around each task, without spawning interpreters."""
    from container.devices import slot_devices
    from container.host import Host
    from container.slots import ThreadSlot
    from container.worker import Worker

    def launch(device, shared_stop):
        return ThreadSlot(Worker(env=env, settings=settings, job_hp=job_hp or {}, trainer=trainer,
                                 stop_requested=shared_stop, mixed_precision=mixed_precision,
                                 rejected=dict(rejected or {}), slot=device.index))

    return Host(env, settings, slot_devices(slots, [], slots), launch, stop)
