"""The Lambda zip is fanout/ plus boto3: importing it must not pull in the training stack."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["fanout", "fanout.cli", "fanout.handlers", "fanout.service", "fanout.tasks", "fanout.plan",
           "fanout.request", "fanout.launcher", "fanout.store", "fanout.bootstrap", "fanout.status",
           "fanout.events", "fanout.metrics", "fanout.settings", "fanout.submit", "fanout.lifecycle",
           "fanout.publisher", "fanout.telemetry", "fanout.quality", "fanout.outcomes",
           "fanout.simulate", "fanout.simulate.cli"]
HEAVY = ["torch", "diffusers", "transformers", "peft", "accelerate", "train", "container", "matplotlib",
         "report", "jinja2"]


def test_importing_fanout_leaves_the_training_stack_out():
    code = (f"import sys, {', '.join(MODULES)}\n"
            "fanout.cli.build_parser()\n"                      # wires `local` too
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"fanout imported {proc.stdout.strip()}"
