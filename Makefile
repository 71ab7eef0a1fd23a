# One-command setup, demo and tests. The venv installs the exact versions in requirements/*.lock
# (`make lock` re-resolves them from setup.py's ranges). torch (requirements/torch.txt) is
# installed FIRST: anything wider makes pip pull a multi-GB CUDA build on a CPU machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK_TOOLS := build/lock-tools
PIP_TOOLS_VERSION ?= 7.6.2
# `make lock LOCK_ARGS=--upgrade` (everything) or `LOCK_ARGS="-P transformers"` (one package):
# without it, pins already in the lock are kept and only new or out-of-range ones resolve.
LOCK_ARGS ?=

.PHONY: install lock demo demo-one test image-test bench clean

install: $(STAMP)

# --no-deps: the lock is the whole environment; `pip check` then proves it is complete.
# -qq: errors only. -q still prints a warning for every package this machine's extra file://
# indexes lack, and setuptools' notice about editable installs, neither of them a problem.
$(STAMP): setup.py Makefile requirements/dev.lock requirements/torch.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -qq -c requirements/dev.lock pip
	$(BIN)/python -m pip install -qq -r requirements/torch.txt
	$(BIN)/python -m pip install -qq --no-deps -r requirements/dev.lock
	$(BIN)/python -m pip install -qq --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# pip-compile runs pip itself, so it uses this machine's pip index settings. It reads only
# setup.py and package metadata from the index (no model hub); with the lock's pins kept it
# takes about a minute. dev.lock holds every extra; image.lock and lambda.lock are constrained
# to dev.lock, so the image and the Lambda zip get exactly the versions the suite ran with.
COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile -q --strip-extras \
	--no-emit-index-url --no-emit-find-links --annotation-style line --unsafe-package torch \
	-c requirements/torch.txt $(LOCK_ARGS)

lock: $(LOCK_TOOLS)/.installed
	$(COMPILE) --all-extras -o requirements/dev.lock setup.py
	$(COMPILE) --extra train --extra container --extra report --extra serve -c requirements/dev.lock -o requirements/image.lock setup.py
	$(COMPILE) -c requirements/dev.lock -o requirements/lambda.lock setup.py
	rm -rf lora_fanout.egg-info

$(LOCK_TOOLS)/.installed: Makefile
	test -x $(LOCK_TOOLS)/bin/python || $(PY) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install -qq pip-tools==$(PIP_TOOLS_VERSION)
	touch $@

# `make demo DEMO_ARGS="--family flux"` (sd, sdxl, flux, flux2-klein): the same job on another tiny base.
DEMO_ARGS ?=
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/demo.py --workdir build/demo $(DEMO_ARGS)

demo-one: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/demo_one.py --workdir build/demo-one

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

# Builds the Dockerfile against a local stand-in base and runs `train` in it (root, Linux,
# buildah/podman from Debian; see docs/container.md#docker). No registry is used.
image-test: install
	bash scripts/image_test.sh

# Benchmarks print figures (never timed assertions in tests); docs/*.md hold measured ones.
bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_train.py --arch tiny --resolution 64 --steps 30 --threads 1
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_worker.py --tasks 8 --steps 10
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_quality.py --tasks 2
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_slots.py --tasks 12 --steps 30 --repeat 3
	$(BIN)/python scripts/bench_plan.py
	$(BIN)/python scripts/bench_launch.py
	$(BIN)/python -m fanout simulate --plots build/simulate
	$(BIN)/python scripts/bench_report.py
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_serve.py --users 1000 --requests 200

clean:
	rm -rf build .pytest_cache

# --- infra (docs/infra.md): the Lambda zip, the Terraform/checkov tool venvs (build/tools/, never
# .venv), and the offline Terraform tests (also part of `make test`; ~80 s)
.PHONY: lambda-zip infra-tools infra-test

# LAMBDA_PYTHON=python3.12 (the functions' runtime version) puts its byte code in the zip: a task
# root is read-only, so without it every cold start compiles the sources (docs/infra.md).
LAMBDA_PYTHON ?=
lambda-zip: install
	$(BIN)/python scripts/build_lambda_zip.py --out build/lambda/fanout.zip $(if $(LAMBDA_PYTHON),--compile-with $(LAMBDA_PYTHON))

infra-tools:
	$(PY) scripts/infra_tools.py all

infra-test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/infra
