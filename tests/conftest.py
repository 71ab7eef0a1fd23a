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
def tiny_flow_models(tmp_path_factory) -> dict:
    """Tiny FLUX.1-dev and FLUX.2 klein (Base) pipeline folders, built once per session (read-only)."""
    pytest.importorskip("diffusers")
    builder = load_script("tiny_flux")
    return {f: builder.build(tmp_path_factory.mktemp(f) / "pipe", family=f) for f in ("flux", "flux2-klein")}


@pytest.fixture(scope="session")
def tiny_klein_distilled(tmp_path_factory) -> Path:
    """A tiny FLUX.2 klein folder of the step-distilled checkpoint (is_distilled: true)."""
    pytest.importorskip("diffusers")
    return load_script("tiny_flux").build(tmp_path_factory.mktemp("klein-distilled") / "pipe", family="flux2-klein",
                                          variant="distilled")
