"""output_uri: each task's artifacts reach S3 as soon as it completes, manifest.json last."""

from __future__ import annotations

import json

import boto3
import pytest

from container.records import read_json
from container.s3 import TaskTransfer
from container.settings import ContainerConfig
from container.worker import Worker
from container.env import read_env
from fanout.tasks import parse_tasks
from opt_ml import make_tree
from test_worker import FakeTrain


class RecordingClient:
    """The real boto3 client, with the order of uploads written down."""

    def __init__(self, client):
        self.client, self.keys = client, []

    def upload_file(self, filename, bucket, key, **kw):
        self.keys.append(key)
        return self.client.upload_file(filename, bucket, key, **kw)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture
def s3(moto_s3):
    client = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    client.create_bucket(Bucket="deliveries")
    yield client
    for obj in client.list_objects_v2(Bucket="deliveries").get("Contents", []):
        client.delete_object(Bucket="deliveries", Key=obj["Key"])
    client.delete_bucket(Bucket="deliveries")


def _keys(s3, prefix):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="deliveries", Prefix=prefix).get("Contents", []))


def _worker(tmp_path, image_root, tasks, s3, *, isolation=False):
    model = tmp_path / "model"
    model.mkdir()
    base = make_tree(tmp_path / "ml", tasks=tasks, model=model, images=image_root)
    fake = FakeTrain()
    client = RecordingClient(s3)
    worker = Worker(env=read_env(base), settings=ContainerConfig(network_isolation=isolation), job_hp={},
                    trainer=fake, transfer=TaskTransfer(client))
    return worker, fake, client, base


def _run(worker, tasks):
    """The host's loop with this one worker as its only slot (a thread: the S3 client is ours)."""
    from container.host import Host
    from container.devices import slot_devices
    from container.slots import ThreadSlot

    host = Host(worker.env, worker.settings, slot_devices(1, [], 1), lambda device, stop: ThreadSlot(worker),
                lambda: False)
    return host.run(parse_tasks("\n".join(json.dumps(t) for t in tasks)))


def test_each_task_is_delivered_before_the_next_one_starts_manifest_last(tmp_path, image_root, s3):
    tasks = [{"task_id": t, "instance_data": "alice", "instance_prompt": "p", "user_id": f"user-{t}",
              "output_uri": f"s3://deliveries/users/{t}/"} for t in ("a", "b")]
    worker, fake, client, base = _worker(tmp_path, image_root, tasks, s3)
    seen_before_b = {}
    run = fake.run_task

    def run_and_look(*args, task_id, **kw):
        if task_id == "b":
            seen_before_b.update(keys=_keys(s3, "users/a/"))
        return run(*args, task_id=task_id, **kw)

    fake.run_task = run_and_look
    summary = _run(worker, tasks)
    assert seen_before_b["keys"] == ["users/a/manifest.json", "users/a/pytorch_lora_weights.safetensors"]
    assert client.keys == ["users/a/pytorch_lora_weights.safetensors", "users/a/manifest.json",
                           "users/b/pytorch_lora_weights.safetensors", "users/b/manifest.json"]
    manifest = json.loads(s3.get_object(Bucket="deliveries", Key="users/b/manifest.json")["Body"].read())
    assert manifest["user_id"] == "user-b"  # carried through untouched
    assert [t.uploaded_to for t in summary.tasks] == ["s3://deliveries/users/a/", "s3://deliveries/users/b/"]
    for task_id in ("a", "b"):  # the delivery's time is the task's "upload" phase (its page shows it)
        status = read_json(base / "checkpoints" / task_id / "status.json")
        assert status["timings"]["upload"] > 0


def test_a_failed_upload_is_reported_but_the_lora_still_ships_in_the_model_folder(tmp_path, image_root, s3):
    tasks = [{"task_id": "a", "instance_data": "alice", "instance_prompt": "p", "output_uri": "s3://no-such-bucket/a/"}]
    worker, fake, client, base = _worker(tmp_path, image_root, tasks, s3)
    summary = _run(worker, tasks)
    assert summary.tasks[0].outcome == "completed"
    assert "no-such-bucket" in summary.tasks[0].error
    assert (base / "model" / "a" / "pytorch_lora_weights.safetensors").exists()


def test_with_network_isolation_nothing_is_uploaded_and_the_summary_says_why(tmp_path, image_root, s3):
    tasks = [{"task_id": "a", "instance_data": "alice", "instance_prompt": "p", "output_uri": "s3://deliveries/a/"}]
    worker, fake, client, base = _worker(tmp_path, image_root, tasks, s3, isolation=True)
    summary = _run(worker, tasks)
    assert client.keys == [] and "network isolation" in summary.tasks[0].error


def test_s3_instance_data_is_downloaded_for_its_task(tmp_path, image_root, s3):
    for f in (image_root / "bob").iterdir():
        s3.upload_file(str(f), "deliveries", f"uploads/bob/{f.name}")
    tasks = [{"task_id": "a", "instance_data": "s3://deliveries/uploads/bob", "instance_prompt": "p"}]
    worker, fake, client, base = _worker(tmp_path, image_root, tasks, s3)
    summary = _run(worker, tasks)
    assert summary.tasks[0].outcome == "completed"
    local = fake.configs["a"].instance_data
    assert sorted(p.name for p in __import__("pathlib").Path(local).iterdir()) == sorted(p.name for p in (image_root / "bob").iterdir())
