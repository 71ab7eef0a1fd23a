"""Fixtures shared by every test package.

The tiny pipeline is built once per test session (a few seconds) with random weights from
``scripts/make_tiny_model.py``: the real diffusers classes, nothing downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_tiny_model():
    """The builder module, for tests that need a variant (v-prediction, another seed)."""
    pytest.importorskip("diffusers")
    return _load_script("make_tiny_model")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, make_tiny_model) -> Path:
    """Path of a tiny epsilon-prediction SD pipeline folder (read-only: copy before changing)."""
    return make_tiny_model.build_pipeline(tmp_path_factory.mktemp("tiny-model") / "sd")


@pytest.fixture(scope="session")
def tiny_model_v(tmp_path_factory, make_tiny_model) -> Path:
    """Path of a tiny v-prediction SD pipeline folder."""
    return make_tiny_model.build_pipeline(tmp_path_factory.mktemp("tiny-model-v") / "sd", prediction_type="v_prediction")
