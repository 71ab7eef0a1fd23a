"""The Lambda zip: fanout/ plus the locked packages the runtime lacks, reproducible, every
handler resolving inside it, and working where only the runtime's boto3 stack is installed."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import boto3
from scripts_loader import load_script

build = load_script("build_lambda_zip")
check_stack = load_script("check_stack")
# what the Lambda Python runtime provides (boto3 and its dependencies), nothing more
RUNTIME = ("boto3", "botocore", "jmespath", "s3transfer", "dateutil", "six.py", "urllib3")


def test_zip_holds_fanout_and_the_locked_powertools_only_and_is_reproducible(tmp_path, lambda_zip):
    names = zipfile.ZipFile(lambda_zip).namelist()
    assert "fanout/handlers.py" in names and "fanout/__init__.py" in names
    assert "aws_lambda_powertools/metrics/__init__.py" in names and "typing_extensions.py" in names
    tops = {n.split("/")[0] for n in names}
    locked = build.locked_versions()
    assert tops == {"fanout", "aws_lambda_powertools", "typing_extensions.py",
                    f"aws_lambda_powertools-{locked['aws-lambda-powertools']}.dist-info",
                    f"typing_extensions-{locked['typing-extensions']}.dist-info"}
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    again = build.build_zip(tmp_path / "again.zip")
    assert again.read_bytes() == lambda_zip.read_bytes()     # same source, same CodeSha256: no spurious plan diff


def test_the_zip_writes_metrics_with_nothing_but_the_runtimes_packages(tmp_path, lambda_zip):
    """No site-packages: the zip and links to boto3's stack alone, as in the Lambda runtime."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    site = __import__("pathlib").Path(boto3.__file__).parents[1]
    for name in RUNTIME:
        (runtime / name).symlink_to(site / name)
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "import fanout.handlers, fanout.telemetry as t\n"
            "assert 'aws_lambda_powertools' not in sys.modules   # imported when metrics are written\n"
            "m = t.Telemetry('Fanout', 'svc'); m.count('RequestsAccepted'); m.flush()\n"
            "import aws_lambda_powertools, typing_extensions\n"
            "assert aws_lambda_powertools.__file__.startswith(sys.argv[1]) and typing_extensions.__file__.startswith(sys.argv[1])")
    run = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(lambda_zip), str(runtime)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    line = json.loads(run.stdout.strip().splitlines()[-1])
    assert line["RequestsAccepted"] == [1.0] and line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Fanout"


def test_every_handler_resolves_in_the_zip_and_a_typo_does_not(lambda_zip):
    for handler in check_stack.HANDLERS.values():
        assert check_stack.handler_problem(lambda_zip, handler) is None, handler
    assert "on_uplaod is not a function" in check_stack.handler_problem(lambda_zip, "fanout.handlers.on_uplaod")
    assert "No module named" in check_stack.handler_problem(lambda_zip, "fanout.handler.on_upload")


def test_byte_code_for_the_runtime_goes_in_and_is_used_from_a_read_only_task_root(tmp_path):
    """--compile-with: unchecked-hash pycs, used as they are (here: even over a broken source)."""
    built = build.build_zip(tmp_path / "compiled.zip", compile_with=sys.executable)
    tag = sys.implementation.cache_tag
    names = zipfile.ZipFile(built).namelist()
    assert f"fanout/__pycache__/handlers.{tag}.pyc" in names and f"aws_lambda_powertools/metrics/__pycache__/metrics.{tag}.pyc" in names
    task = tmp_path / "task"
    zipfile.ZipFile(built).extractall(task)
    (task / "fanout" / "lifecycle.py").write_text("this is not python")
    run = subprocess.run([sys.executable, "-I", "-B", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                          "import fanout.lifecycle as l; print(l.SOURCE)", str(task)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "fanout", run.stderr[-1000:]
