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
def tiny_z_image(tmp_path_factory, make_tiny_model) -> Path:
    """Path of a tiny Z-Image (Base) pipeline folder (read-only: copy before changing)."""
    return make_tiny_model.build_pipeline(tmp_path_factory.mktemp("tiny-z-image") / "z-image", family="z-image")


@pytest.fixture(scope="session")
def tiny_z_image_turbo(tmp_path_factory, make_tiny_model) -> Path:
    """Path of a tiny Z-Image-Turbo pipeline folder (Turbo's model card; same weights as the Base one)."""
    return make_tiny_model.build_pipeline(tmp_path_factory.mktemp("tiny-z-image-turbo") / "z-image-turbo",
                                          family="z-image", variant="turbo")


@pytest.fixture(scope="session")
def tiny_qwen_image(tmp_path_factory, make_tiny_model) -> Path:
    """Path of a tiny Qwen-Image pipeline folder (read-only: copy before changing)."""
    return make_tiny_model.build_pipeline(tmp_path_factory.mktemp("tiny-qwen-image") / "qwen-image", family="qwen-image")


@pytest.fixture(scope="session")
def chromium_browser():
    """Debian's chromium driven by Playwright, offline (no browser download), once per session.
    Tests use ``chromium``. Skipped only when the binary is not installed."""
    from page_checks import CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: `apt-get install chromium` (.ci/run installs it) to run the browser checks")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def chromium(chromium_browser):
    """The session's browser for one test: the report pages' checks (page_checks.open_page) open
    each page in a context of its own, left open for the test; they are closed after it."""
    yield chromium_browser
    for context in list(chromium_browser.contexts):
        context.close()


@pytest.fixture(scope="session")
def tiny_scorers(tmp_path_factory) -> Path:
    """Path of a tiny scorer folder (clip/, dino/, face/ with OpenCV's Haar cascade): the
    evaluation's real classes with random weights (scripts/make_tiny_scorers.py). Read-only."""
    pytest.importorskip("transformers")
    return load_script("make_tiny_scorers").build_scorers(tmp_path_factory.mktemp("tiny-scorers") / "eval")



@pytest.fixture(scope="session")
def tiny_flow_models(tmp_path_factory, make_tiny_model) -> dict:
    """Tiny FLUX.1-dev and FLUX.2 klein (Base) pipeline folders, built once per session (read-only)."""
    return {f: make_tiny_model.build_pipeline(tmp_path_factory.mktemp(f) / "pipe", family=f)
            for f in ("flux", "flux2-klein")}


@pytest.fixture(scope="session")
def tiny_klein_distilled(tmp_path_factory, make_tiny_model) -> Path:
    """A tiny FLUX.2 klein folder of the step-distilled checkpoint (is_distilled: true)."""
    return make_tiny_model.build_pipeline(tmp_path_factory.mktemp("klein-distilled") / "pipe", family="flux2-klein",
                                          variant="distilled")
