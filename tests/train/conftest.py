"""Fixtures of the train tests: demo images, a loaded tiny base model, a task runner.

Runs are tiny (resolution 32, a handful of steps) so the whole train suite stays within a few
minutes on 2 CPU cores; trained results are shared through module-scoped fixtures.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """The tiny model's matmuls are too small for threads: on a shared 2-core machine one thread
    is up to 10x faster than two fighting other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    from train_helpers import load_script

    out = tmp_path_factory.mktemp("demo-data")
    load_script("make_demo_data").make_demo_data(out, count=4, size=48, captions=True)
    return out


@pytest.fixture(scope="session")
def base(tiny_model):
    from train.pipeline import load_base

    return load_base(tiny_model)


@pytest.fixture(scope="module")
def scorers(tiny_scorers):
    """The evaluation's scorers on the tiny scorer folder. Per module: they keep a cache of base
    renders (Scorers.base_renders) that tasks fill."""
    from train.quality import load_scorers

    return load_scorers(tiny_scorers)
