"""The locks in requirements/ against setup.py's ranges, and this environment against the lock.

setup.py says which versions are compatible; the locks say which ones the project installs
(`make install`, the Dockerfile, Lambda zips). A lock that drifts from setup.py, misses a
dependency (pip would then pick one at install time) or pins torch (the platform's) breaks
the promise that what ships is what the suite ran with.
"""

from __future__ import annotations

import importlib.metadata
import re
import runpy
from pathlib import Path
from unittest import mock

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
# Which extras each lock installs: dev every one (Makefile: --all-extras), the image what the
# Dockerfile installs, a Lambda zip the bare package.
IMAGE_EXTRAS = ("train", "container", "report", "serve")
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s#;]+)")
TORCH_LIKE = {"torch"}  # the platform's: never in a lock


def read_lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (REQ / name).read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def setup_kwargs() -> dict:
    """What setup.py passes to setup(), without building anything."""
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return setup.call_args.kwargs


def requirements_for(extras) -> list[Requirement]:
    kw = setup_kwargs()
    reqs = list(kw["install_requires"])
    for extra in extras:
        reqs += kw["extras_require"][extra]
    return [Requirement(r) for r in reqs]


def closure(reqs: list[Requirement]) -> set[str]:
    """Every distribution pip would install for ``reqs``, read from the installed metadata."""
    env = default_environment()
    seen: set[str] = set()
    todo = [(r, "") for r in reqs]
    while todo:
        req, via_extra = todo.pop()
        if req.marker and not req.marker.evaluate({**env, "extra": via_extra}):
            continue
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        for spec in importlib.metadata.distribution(name).requires or []:
            dep = Requirement(spec)
            markers = [e for e in extras] or [""]
            for e in markers:
                todo.append((dep, e))
    return {k.split("[")[0] for k in seen}


LOCKS = {
    "dev.lock": lambda: tuple(setup_kwargs()["extras_require"]),
    "image.lock": lambda: IMAGE_EXTRAS,
    "lambda.lock": lambda: (),
}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_requirement_of_setup_py_is_locked_inside_its_range(lock):
    pins = read_lock(lock)
    problems = []
    for req in requirements_for(LOCKS[lock]()):
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is not in requirements/{lock}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"requirements/{lock} pins {name}=={pins[name]}, outside setup.py's {req}")
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


@pytest.mark.parametrize("lock", ["image.lock", "lambda.lock"])
def test_the_image_and_lambda_get_the_versions_the_suite_ran_with(lock):
    dev = read_lock("dev.lock")
    differ = {n: (v, dev.get(n)) for n, v in read_lock(lock).items() if dev.get(n) != v}
    assert not differ, f"requirements/{lock} vs dev.lock (lock, dev): {differ}"


def test_no_lock_pins_torch_and_torch_txt_pins_exactly_one():
    for lock in LOCKS:
        assert not TORCH_LIKE & set(read_lock(lock)), f"{lock} pins torch: it must come from the platform"
    pins = [line for line in (REQ / "torch.txt").read_text().splitlines() if PIN.match(line)]
    assert len(pins) == 1 and pins[0].startswith("torch==")


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_each_lock_is_exactly_what_its_extras_install(lock):
    """Nothing missing (pip would choose it at install time) and nothing left over."""
    needed = closure(requirements_for(LOCKS[lock]())) - TORCH_LIKE
    locked = set(read_lock(lock))
    assert needed - locked == set(), f"missing from requirements/{lock}: run `make lock`"
    # pip and setuptools are locked on purpose where the closure has them (sagemaker-training
    # and torch depend on them), so the comparison is exact.
    assert locked - needed == set(), f"requirements/{lock} holds packages nothing requires"


def test_this_environment_runs_the_locked_versions():
    wrong = {}
    for name, version in read_lock("dev.lock").items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    torch_pin = (REQ / "torch.txt").read_text().split("torch==")[1].split()[0]
    torch_installed = importlib.metadata.version("torch").split("+")[0]
    assert not wrong and torch_installed == torch_pin, (
        f"(locked, installed): {wrong}, torch {torch_pin} vs {torch_installed}; `make install` installs the lock")
