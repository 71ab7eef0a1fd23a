"""Fixtures of the serving tests: a moto server, the tiny bases of every family, and a factory
that starts one real server process per family (``python -m serve``) over 30 users' LoRAs.

The server starts first and loads its base while this process trains the family's LoRA, makes
the users and renders their reference images (two cores: the work overlaps). Servers live for
the session and are stopped at its end.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from scripts_loader import load_script  # noqa: E402
from serving_helpers import BUCKET, TABLE, export_lora, make_users, pristine, reference, train_lora  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.WARNING)
USERS = {"sd": 30, "sdxl": 30, "flux": 30, "flux2-klein": 30}   # the issue asks 30 per family
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The servers run one torch thread (--threads 1); the references here must too: on a CPU,
    bit-identical results need the same reductions, hence the same thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def moto_serve():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def aws(moto_serve):
    """boto3 clients on the moto server, with the bucket and the models table created."""
    import boto3

    from fanout.bootstrap import models_table_spec

    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    s3, dynamodb = session.client("s3", endpoint_url=moto_serve), session.client("dynamodb", endpoint_url=moto_serve)
    s3.create_bucket(Bucket=BUCKET)
    dynamodb.create_table(**models_table_spec(TABLE))
    return {"s3": s3, "dynamodb": dynamodb, "url": moto_serve}


@pytest.fixture(scope="session")
def instance_images(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve-images")
    load_script("make_demo_data").make_demo_data(out, count=2, size=32)
    return out


@pytest.fixture(scope="session")
def bases(tiny_model, tiny_sdxl_model, tiny_flow_models) -> dict[str, Path]:
    return {"sd": tiny_model, "sdxl": tiny_sdxl_model,
            "flux": tiny_flow_models["flux"], "flux2-klein": tiny_flow_models["flux2-klein"]}


@dataclass
class Served:
    family: str
    base: Path
    server: object                    # scripts/serve_process.ServeProcess
    users: dict[str, Path]            # user name -> model folder
    names: dict[str, str]             # user name -> what a request says in "model"
    references: dict[str, object]     # user name -> its image (numpy)
    pipe: object                      # the pristine pipeline (deep-copied for more references)
    extra: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def serve_family(bases, instance_images, aws, tmp_path_factory):
    """family -> Served (made once per session, used by both test modules). SD's users are in S3 (moto) and the models table;
    the other families' in a local folder."""
    made: dict[str, Served] = {}
    proc = load_script("serve_process")

    def get(family: str) -> Served:
        if family in made:
            return made[family]
        root = tmp_path_factory.mktemp(f"serve-{family}")
        (root / "models").mkdir()
        args = ["--models-root", root / "models", "--cache-size", 4, "--max-rank", 4, "--cache-dir", root / "cache"]
        env = {}
        if family == "sd":
            args += ["--models-uri", f"s3://{BUCKET}/models/", "--models-table", TABLE, "--disk-cache-size", 8,
                     "--max-adapter-mb", 1, "--endpoint-url", aws["url"], "--region", "us-east-1"]
            env = dict(AWS)
        server = proc.ServeProcess(bases[family], *args, env=env, log_path=root / "serve.log").start()
        try:
            t0 = time.perf_counter()
            # SD's LoRA is trained by the project's loop (with a text-encoder part); the other
            # families' are written by its exporter from a random adapter (no training: cheaper)
            trained = train_lora(bases[family], instance_images, root / "trained", train_text_encoder=True) \
                if family == "sd" else export_lora(bases[family], family, root / "trained")
            users = make_users(trained, root / "models", USERS[family])
            names = {u: u for u in users}
            if family == "sd":
                names = {u: _upload(aws["s3"], folder, f"models/{u}/r1/") for u, folder in users.items()}
            pipe = pristine(bases[family], family)
            refs = {u: reference(pipe, folder)[0] for u, folder in users.items()}
            t1 = time.perf_counter()
            server.wait_ready()
            print(f"{family}: trained, {USERS[family]} users and their references in {t1 - t0:.1f} s; "
                  f"server ready {time.perf_counter() - t1:.1f} s later")
        except BaseException:
            server.stop()
            raise
        made[family] = Served(family, bases[family], server, users, names, refs, pipe,
                              extra={"root": root, "trained": trained})
        return made[family]

    def stop(family: str) -> None:
        """Stop a family's server once no test needs it (the suite goes on for a while)."""
        if family in made:
            made[family].server.stop()

    get.stop = stop
    yield get
    for served in made.values():
        served.server.stop()


def _upload(s3, folder: Path, prefix: str) -> str:
    for path in folder.iterdir():
        s3.upload_file(str(path), BUCKET, prefix + path.name)
    return f"s3://{BUCKET}/{prefix}"
