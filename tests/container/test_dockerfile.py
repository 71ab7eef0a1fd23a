"""The image contract, checked statically (no Docker engine here): what `docker run IMAGE train` needs."""

from __future__ import annotations

import json
import re

from opt_ml import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions(name: str) -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in text.splitlines() if line.upper().startswith(name + " ")]


def test_train_runs_as_pid_1_in_exec_form_so_sigterm_reaches_it():
    cmd = _instructions("CMD")
    assert len(cmd) == 1 and json.loads(cmd[0]) == ["train"]  # JSON array: no /bin/sh -c wrapper
    assert not _instructions("ENTRYPOINT")  # `docker run IMAGE train` must not become `<entrypoint> train`


def test_the_base_image_is_a_build_argument_and_torch_comes_from_it():
    assert _instructions("ARG")[0].startswith("BASE_IMAGE=") and "cuda" in _instructions("ARG")[0]
    assert _instructions("FROM") == ["${BASE_IMAGE}"]
    assert "torch-pin" in DOCKERFILE and ".[train,container]" in DOCKERFILE


def test_no_weights_are_baked_in_and_the_hub_is_offline():
    assert "HF_HUB_OFFLINE=1" in DOCKERFILE
    copied = " ".join(_instructions("COPY"))
    assert not re.search(r"\.(safetensors|bin|ckpt|pt)\b", copied)
    assert "from_pretrained" not in DOCKERFILE and "huggingface-cli" not in DOCKERFILE


def test_build_tools_live_only_as_long_as_the_install_step():
    run = next(r for r in _instructions("RUN") if "pip install" in r)
    assert "apt-get install" in run and "apt-get purge" in run  # same layer: the compiler never ships
    assert "dpkg -s" in run  # and a compiler the base image already had is left alone
