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
