"""The Terraform files are in `terraform fmt` form (what reviewers and CI tooling expect)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_terraform_files_are_formatted(terraform):
    run = subprocess.run([str(terraform.command), "fmt", "-check", "-diff", "-recursive", "-no-color",
                          str(ROOT / "infra"), str(ROOT / "tests" / "infra" / "stack")],
                         capture_output=True, text=True, env=terraform.env(), timeout=120)
    assert run.returncode == 0, f"run `terraform fmt -recursive infra tests/infra/stack`:\n{run.stdout}"
