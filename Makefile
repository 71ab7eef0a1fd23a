# One-command setup, demo and tests. torch==2.13.0 is installed FIRST and pinned: anything
# wider makes pip pull a multi-GB CUDA build on a CPU machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo demo-one test bench clean

install: $(STAMP)

$(STAMP): setup.py Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[train,container,dev]" "torch==$(TORCH_VERSION)"
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/demo.py --workdir build/demo

demo-one: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/demo_one.py --workdir build/demo-one

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

# Benchmarks print figures (never timed assertions in tests); docs/*.md hold measured ones.
bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_train.py --arch tiny --resolution 64 --steps 30 --threads 1
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_worker.py --tasks 8 --steps 10
	$(BIN)/python scripts/bench_plan.py
	$(BIN)/python scripts/bench_launch.py
	$(BIN)/python -m fanout simulate --plots build/simulate

clean:
	rm -rf build .pytest_cache

# --- infra (docs/infra.md): the Lambda zip, the Terraform/checkov tool venvs (build/tools/, never
# .venv), and the offline Terraform tests (also part of `make test`; ~80 s)
.PHONY: lambda-zip infra-tools infra-test

lambda-zip:
	$(PY) scripts/build_lambda_zip.py --out build/lambda/fanout.zip

infra-tools:
	$(PY) scripts/infra_tools.py all

infra-test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/infra
