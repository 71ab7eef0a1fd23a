"""Fixtures shared by every test package.

The tiny pipeline is built once per test session (a few seconds) with random weights from
``scripts/make_tiny_model.py``: the real diffusers classes, nothing downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from scripts_loader import load_script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")




@pytest.fixture(scope="session")
def make_tiny_model():
    """The builder module, for tests that need a variant (v-prediction, another seed)."""
    pytest.importorskip("diffusers")
    return load_script("make_tiny_model")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, make_tiny_model) -> Path:
    """Path of a tiny epsilon-prediction SD pipeline folder (read-only: copy before changing)."""
    return make_tiny_model.build_pipeline(tmp_path_factory.mktemp("tiny-model") / "sd")


@pytest.fixture(scope="session")
def tiny_model_v(tmp_path_factory, make_tiny_model) -> Path:
    """Path of a tiny v-prediction SD pipeline folder."""
    return make_tiny_model.build_pipeline(tmp_path_factory.mktemp("tiny-model-v") / "sd", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_sdxl_model(tmp_path_factory, make_tiny_model) -> Path:
    """Path of a tiny epsilon-prediction SDXL pipeline folder (read-only: copy before changing)."""
    return make_tiny_model.build_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "sdxl", family="sdxl")


@pytest.fixture(scope="session")
def tiny_scorers(tmp_path_factory) -> Path:
    """Path of a tiny scorer folder (clip/, dino/, face/ with OpenCV's Haar cascade): the
    evaluation's real classes with random weights (scripts/make_tiny_scorers.py). Read-only."""
    pytest.importorskip("transformers")
    return load_script("make_tiny_scorers").build_scorers(tmp_path_factory.mktemp("tiny-scorers") / "eval")


@pytest.fixture(scope="session")
def tiny_flow(tmp_path_factory) -> dict:
    """Tiny FLUX.1 and FLUX.2 Klein pipeline folders by family (scripts/tiny_flux.py). Read-only."""
    pytest.importorskip("diffusers")
    builder = load_script("tiny_flux")
    return {f: builder.build(tmp_path_factory.mktemp(f) / "pipe", family=f) for f in ("flux", "flux2-klein")}
