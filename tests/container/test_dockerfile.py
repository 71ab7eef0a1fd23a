"""The image contract, checked statically: what `docker run IMAGE train` needs.

`make image-test` (scripts/image_test.sh, run by .ci/run) builds and runs the image for real.
"""

from __future__ import annotations

import json
import re

from opt_ml import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions(name: str, text: str = DOCKERFILE) -> list[str]:
    text = re.sub(r"\\\n", " ", text)
    return [line.split(None, 1)[1] for line in text.splitlines() if line.upper().startswith(name + " ")]


def _final_stage() -> str:
    return re.split(r"(?m)^FROM ", DOCKERFILE)[-1]


def test_train_runs_as_pid_1_in_exec_form_so_sigterm_reaches_it():
    cmd = _instructions("CMD")
    assert len(cmd) == 1 and json.loads(cmd[0]) == ["train"]  # JSON array: no /bin/sh -c wrapper
    assert not _instructions("ENTRYPOINT")  # `docker run IMAGE train` must not become `<entrypoint> train`


def test_the_base_image_is_a_build_argument_and_torch_comes_from_it():
    arg = _instructions("ARG")[0]
    assert arg.startswith("BASE_IMAGE=") and "cuda" in arg
    assert _instructions("FROM") == ["${BASE_IMAGE} AS wheels", "${BASE_IMAGE}"]
    # The default base carries the torch the dev venv and the locks were made with.
    torch_pin = re.search(r"^torch==(\S+)", (ROOT / "requirements" / "torch.txt").read_text(), re.M).group(1)
    assert arg.split(":", 1)[1].startswith(torch_pin + "-"), (arg, torch_pin)
    assert "requirements/torch.txt" in DOCKERFILE  # and the build refuses a base with another torch


def test_the_image_installs_exactly_the_image_lock():
    wheel_step = next(r for r in _instructions("RUN") if "pip wheel" in r)
    assert "--no-deps" in wheel_step and "-r requirements/image.lock" in wheel_step
    install = next(r for r in _instructions("RUN", _final_stage()) if "pip install" in r)
    assert "--no-index" in install and "--no-deps" in install and "pip check" in install


def test_no_weights_are_baked_in_and_the_hub_is_offline():
    assert "HF_HUB_OFFLINE=1" in DOCKERFILE
    copied = " ".join(_instructions("COPY"))
    assert not re.search(r"\.(safetensors|bin|ckpt|pt)\b", copied)
    assert "from_pretrained" not in DOCKERFILE and "huggingface-cli" not in DOCKERFILE


def test_no_compiler_or_source_reaches_the_image():
    final = _final_stage()
    assert "apt-get" not in final and not _instructions("COPY", final)  # wheels are bind-mounted
    assert "--mount=type=bind,from=wheels" in final
    install = next(r for r in _instructions("RUN", final) if "pip install" in r)
    # The import check runs outside any source folder, so it fails if the package is not installed.
    assert install.index("cd /;") < install.index("python -c")
    assert "g++" not in DOCKERFILE.replace("g++ is not needed", "")


def test_the_image_is_also_the_inference_container():
    """SageMaker hosting runs `docker run IMAGE serve`: the serve package and command are in it."""
    copied = " ".join(_instructions("COPY"))
    assert "serve ./serve" in copied
    install = next(r for r in _instructions("RUN", _final_stage()) if "pip install" in r)
    assert "serve.app" in install and "command -v serve" in install
    setup = (ROOT / "setup.py").read_text()
    assert '"serve=serve.cli:main"' in setup
