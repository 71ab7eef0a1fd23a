"""The infra tests: a moto server on 127.0.0.1 (the fanout tests' AtomicMotoServer) and the
Terraform/checkov tools from scripts/infra_tools.py, installed into their own venvs on first
use (skipped, with the reason, only where they cannot be installed)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fanout"))

from fanout_fakes import AtomicMotoServer  # noqa: E402
from scripts_loader import load_script  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.WARNING)
infra_tools = load_script("infra_tools")


@pytest.fixture(scope="session")
def moto_url():
    server = AtomicMotoServer()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def terraform():
    try:
        return infra_tools.ensure_terraform()
    except infra_tools.ToolsError as exc:
        pytest.skip(f"Terraform tools could not be installed: {exc}")


@pytest.fixture(scope="session")
def checkov():
    try:
        return infra_tools.ensure_checkov()
    except infra_tools.ToolsError as exc:
        pytest.skip(f"checkov could not be installed: {exc}")


@pytest.fixture(scope="session")
def lambda_zip(tmp_path_factory) -> Path:
    return load_script("build_lambda_zip").build_zip(tmp_path_factory.mktemp("lambda") / "fanout.zip")
