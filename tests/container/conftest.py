"""Fixtures of the container tests; the tree helpers live in opt_ml.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from opt_ml import load_script


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    """The images channel: one folder of subject images per user, plus a corrupt one."""
    demo = load_script("make_demo_data")
    root = tmp_path_factory.mktemp("images")
    for i, user in enumerate(("alice", "bob", "carol", "dave", "erin")):
        demo.make_demo_data(root / "tmp" / user, count=2, size=40, seed=i)
        (root / "tmp" / user / "instance").rename(root / user)
    (root / "broken").mkdir()
    (root / "broken" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


@pytest.fixture(scope="module")
def moto_s3():
    """A moto server on 127.0.0.1 (real HTTP, boto3's real serialization); yields its endpoint URL."""
    import os

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
