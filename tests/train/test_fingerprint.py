"""The base model's identity keys the class-image cache and names the base in manifests."""

from __future__ import annotations

import os
import shutil

import pytest


def test_a_redownloaded_base_keeps_its_identity_and_other_weights_do_not(tiny_model, make_tiny_model, tmp_path):
    from train.pipeline import load_base

    # A restarted SageMaker job downloads the model channel again: new path, new mtimes.
    copy = tmp_path / "redownloaded"
    shutil.copytree(tiny_model, copy)
    for f in copy.rglob("*"):
        os.utime(f, (1_000_000_000, 1_000_000_000))
    other = make_tiny_model.build_pipeline(tmp_path / "other-weights", seed=7)

    original = load_base(tiny_model).identity()
    assert load_base(copy).identity() == original, "the class-image cache must survive a restart"
    assert load_base(other).identity() != original, "different weights must not share cached class images"


def test_manifest_and_cache_key_name_the_same_weights(tiny_model):
    pytest.importorskip("torch")
    from train.export.manifest import base_model_identity
    from train.pipeline import load_base

    assert base_model_identity(tiny_model)["weights_sha256"].startswith(load_base(tiny_model).identity())
