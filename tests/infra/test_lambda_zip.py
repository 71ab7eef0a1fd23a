"""The Lambda zip: fanout/ alone, reproducible, every handler resolving inside it."""

from __future__ import annotations

import zipfile

from scripts_loader import load_script

build = load_script("build_lambda_zip")
check_stack = load_script("check_stack")


def test_zip_holds_the_fanout_package_only_and_is_reproducible(tmp_path, lambda_zip):
    names = zipfile.ZipFile(lambda_zip).namelist()
    assert "fanout/handlers.py" in names and "fanout/__init__.py" in names
    assert all(n.startswith("fanout/") and n.endswith(".py") and "__pycache__" not in n for n in names)
    again = build.build_zip(tmp_path / "again.zip")
    assert again.read_bytes() == lambda_zip.read_bytes()     # same source, same CodeSha256: no spurious plan diff


def test_every_handler_resolves_in_the_zip_and_a_typo_does_not(lambda_zip):
    for handler in check_stack.HANDLERS.values():
        assert check_stack.handler_problem(lambda_zip, handler) is None, handler
    assert "on_uplaod is not a function" in check_stack.handler_problem(lambda_zip, "fanout.handlers.on_uplaod")
    assert "No module named" in check_stack.handler_problem(lambda_zip, "fanout.handler.on_upload")
