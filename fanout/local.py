"""`fanout local`: a K-instance SageMaker training job on this machine, no Docker, no AWS.

    python -m fanout local --tasks tasks.jsonl --model MODEL --images IMAGES \\
        [--class-images DIR] [--eval-models DIR] --instances 2 [--gpus-per-host 2] --workdir W \\
        [--hyperparameters '{"max_train_steps": 50}']

Each host is a `train` process (the container entry point) with its own /opt/ml tree at
``W/<host>/``, config files written as SageMaker writes them; ``--gpus-per-host N`` gives each
host N slots (CPU slots here, without a GPU). What S3 would hold is emulated
under ``W/s3/``:

    W/s3/checkpoints/<task_id>/...   the shared checkpoint prefix, synced while hosts run
    W/s3/model/<task_id>/...         every host's model folder merged (model.tar.gz unpacked)
    W/s3/output/<host>/summary.json  every host's output data merged

Running again on the same workdir after the job was killed (even kill -9 of the whole process
group) is a spot restart: each host starts from a fresh tree with the whole checkpoint prefix
restored, so completed tasks are returned, not retrained, and the interrupted one resumes.

Stdlib only: hosts run as subprocesses, torch is never imported here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Mapping

from fanout.errors import FanoutError, TaskListError
from fanout.tasks import load_tasks

CHANNEL_CONFIG = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
GROUP = "homogeneousCluster"
HOST_DIRS = ("input", "model", "output", "checkpoints")


# -- CLI ------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--tasks", type=Path, required=True, help="task list (JSON Lines or a JSON array)")
    parser.add_argument("--model", type=Path, required=True, help="base model: a diffusers pipeline folder (channel 'model')")
    parser.add_argument("--images", type=Path, required=True, help="instance images root (channel 'images')")
    parser.add_argument("--class-images", type=Path, default=None, help="class images root (channel 'class'; optional)")
    parser.add_argument("--eval-models", type=Path, default=None,
                        help="scorer models: clip/, dino/, optional face/ (channel 'eval'; optional: without it "
                             "tasks are not evaluated; docs/quality.md)")
    parser.add_argument("--instances", type=int, default=2, help="number of hosts (default: 2)")
    parser.add_argument("--gpus-per-host", type=int, default=None,
                        help="slots per host: sets the job hyperparameter gpus_per_host (default: every GPU a "
                             "host sees, 1 without a GPU; here, without a GPU, N runs N CPU slots per host)")
    parser.add_argument("--workdir", type=Path, required=True,
                        help="job folder: W/<host>/ trees, W/s3/ results, W/logs/; reuse it to restart a killed job")
    parser.add_argument("--hyperparameters", default="{}",
                        help="job hyperparameters as a JSON object, or @FILE (default: {})")
    parser.add_argument("--hyperparameter-encoding", choices=("sdk", "raw"), default="sdk",
                        help="how values are written to hyperparameters.json: sdk JSON-quotes them like the "
                             "SageMaker Python SDK ('\"400\"'), raw writes bare strings like the API ('400')")
    parser.add_argument("--sync-interval", type=float, default=2.0,
                        help="seconds between checkpoint syncs to W/s3/checkpoints (default: 2)")
    parser.add_argument("--quiet", action="store_true", help="do not echo host logs (they are in W/logs/<host>.log)")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        job = LocalJob(
            tasks=args.tasks, model=args.model, images=args.images, class_images=args.class_images,
            eval_models=args.eval_models,
            instances=args.instances, workdir=args.workdir,
            hyperparameters=_with_slots(_read_hyperparameters(args.hyperparameters), args.gpus_per_host),
            encoding=args.hyperparameter_encoding, sync_interval=args.sync_interval, echo=not args.quiet,
        )
        job.prepare()
    except TaskListError as exc:
        print(f"fanout local: {len(exc.problems)} problem(s) in {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except FanoutError as exc:
        print(f"fanout local: {exc}", file=sys.stderr)
        return 2
    codes = job.run()
    print(report(args.workdir))
    write_job_page(args.workdir)
    failed = {h: c for h, c in codes.items() if c != 0}
    for host, code in failed.items():
        failure = args.workdir / host / "output" / "failure"
        reason = failure.read_text().strip() if failure.exists() else "(no failure file)"
        print(f"{host} exited {code}: {reason}", file=sys.stderr)
    return 0 if not failed else 1


# -- the job --------------------------------------------------------------------------------

class LocalJob:
    def __init__(self, *, tasks: Path, model: Path, images: Path, class_images: Path | None, instances: int,
                 workdir: Path, hyperparameters: Mapping, encoding: str = "sdk", sync_interval: float = 2.0,
                 echo: bool = True, command: list[str] | None = None, eval_models: Path | None = None):
        if instances < 1:
            raise FanoutError(f"--instances must be at least 1, got {instances}")
        for name, path in (("--model", model), ("--images", images), ("--class-images", class_images),
                           ("--eval-models", eval_models)):
            if path is not None and not Path(path).is_dir():
                raise FanoutError(f"{name} {path} is not a folder")
        self.tasks_file = Path(tasks)
        self.channels = {"model": Path(model), "images": Path(images)}
        if class_images is not None:
            self.channels["class"] = Path(class_images)
        if eval_models is not None:
            self.channels["eval"] = Path(eval_models)
        self.hosts = [f"algo-{i + 1}" for i in range(instances)]
        self.workdir = Path(workdir).resolve()
        self.s3 = self.workdir / "s3"
        self.hyperparameters = dict(hyperparameters)
        self.encoding = encoding
        self.sync_interval = sync_interval
        self.echo = echo
        self.command = command or [sys.executable, "-m", "container"]
        self._seen: dict[str, dict[str, tuple[int, int]]] = {h: {} for h in self.hosts}
        self._procs: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._print_lock = threading.Lock()

    def prepare(self) -> None:
        """Validate the task list, then give every host a fresh tree with the checkpoints restored."""
        load_tasks(self.tasks_file)  # like `fanout submit`: a malformed list never starts hosts
        restored = sorted(p.name for p in (self.s3 / "checkpoints").glob("*") if p.is_dir() and not p.name.startswith("_"))
        if restored:
            print(f"restart: restoring the checkpoints of {len(restored)} task(s) to every host", flush=True)
        for host in self.hosts:
            self._make_tree(host)

    def run(self) -> dict[str, int]:
        """Start every host, sync checkpoints while they run, merge the results; host -> exit code."""
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        readers = []
        previous = _forward_stops(self)
        try:
            for host in self.hosts:
                proc = subprocess.Popen(self.command, env=self._host_env(host), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, cwd=self.workdir / host)
                self._procs[host] = proc
                reader = threading.Thread(target=self._pump, args=(host, proc.stdout, logs / f"{host}.log"), daemon=True)
                reader.start()
                readers.append(reader)
            syncer = threading.Thread(target=self._sync_loop, daemon=True)
            syncer.start()
            codes = {host: proc.wait() for host, proc in self._procs.items()}
            self._stop.set()
            syncer.join()
            for reader in readers:
                reader.join(timeout=10)
        finally:
            _restore_handlers(previous)
        self.sync_checkpoints()
        self._merge("model", self.s3 / "model")
        self._merge("output/data", self.s3 / "output")
        return codes

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Pass a stop on to every host (they save state and exit), as SageMaker does on StopTrainingJob."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    # -- trees ------------------------------------------------------------------------------

    def _make_tree(self, host: str) -> None:
        tree = self.workdir / host
        for name in HOST_DIRS:  # a restarted instance starts empty, like a fresh EC2 host
            if (tree / name).exists():
                shutil.rmtree(tree / name)
        config = tree / "input" / "config"
        config.mkdir(parents=True)
        _write_json(config / "hyperparameters.json", encode_hyperparameters(self.hyperparameters, self.encoding))
        _write_json(config / "resourceconfig.json", resource_config(host, self.hosts))
        channels = {"tasks": {**CHANNEL_CONFIG, "ContentType": "application/jsonlines"}}
        channels.update({name: dict(CHANNEL_CONFIG) for name in self.channels})
        _write_json(config / "inputdataconfig.json", channels)
        data = tree / "input" / "data"
        (data / "tasks").mkdir(parents=True)
        shutil.copy2(self.tasks_file, data / "tasks" / self.tasks_file.name)
        for name, source in self.channels.items():
            # Read-only inputs: a link stands in for SageMaker's download.
            (data / name).symlink_to(source.resolve(), target_is_directory=True)
        for sub in ("model", "output/data", "checkpoints"):
            (tree / sub).mkdir(parents=True, exist_ok=True)
        if (self.s3 / "checkpoints").is_dir():
            shutil.copytree(self.s3 / "checkpoints", tree / "checkpoints", dirs_exist_ok=True)
            # Restored files are not "new" for this host: re-uploading a stale copy of another
            # host's task could overwrite that host's newer files in the shared prefix.
            self._seen[host] = {rel: sig for rel, sig in _files(tree / "checkpoints")}

    def _host_env(self, host: str) -> dict[str, str]:
        env = dict(os.environ)
        env["SAGEMAKER_BASE_DIR"] = str(self.workdir / host)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TRAINING_JOB_NAME", f"local-{self.workdir.name}")
        # K emulated instances share this machine's cores: without a split every host starts
        # one thread per core and they thrash.
        threads = str(max(1, (os.cpu_count() or 1) // len(self.hosts)))
        env.setdefault("OMP_NUM_THREADS", threads)
        env.setdefault("MKL_NUM_THREADS", threads)
        root = Path(__file__).resolve().parents[1]
        if (root / "container").is_dir():  # a source checkout: let the host import it from any cwd
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(root), env.get("PYTHONPATH"))))
        return env

    # -- logs and S3 emulation --------------------------------------------------------------

    def _pump(self, host: str, stream: IO[bytes], log_path: Path) -> None:
        with open(log_path, "ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                if self.echo:
                    with self._print_lock:
                        sys.stdout.write(f"{host} | {raw.decode('utf-8', 'replace')}")
                        sys.stdout.flush()

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.sync_interval):
            self.sync_checkpoints()

    def sync_checkpoints(self) -> int:
        """Copy new or changed checkpoint files of every host to W/s3/checkpoints; returns the count."""
        copied = 0
        for host in self.hosts:
            src = self.workdir / host / "checkpoints"
            seen = self._seen[host]
            for rel, sig in _files(src):
                if seen.get(rel) == sig:
                    continue
                dst = self.s3 / "checkpoints" / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(f".{dst.name}.sync")
                try:
                    shutil.copy2(src / rel, tmp)
                    os.replace(tmp, dst)
                except FileNotFoundError:
                    continue  # deleted while we looked (an old resume state pruned): nothing to sync
                seen[rel] = sig
                copied += 1
        return copied

    def _merge(self, sub: str, target: Path) -> None:
        """What SageMaker uploads at the end: every host's folder merged into one."""
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for host in self.hosts:
            src = self.workdir / host / sub
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True)


# -- SageMaker's config files ----------------------------------------------------------------

def encode_hyperparameters(values: Mapping, encoding: str = "sdk") -> dict[str, str]:
    """Every value a string, as SageMaker passes them: JSON-quoted by the SDK or bare (raw API)."""
    out = {}
    for name, value in values.items():
        if encoding == "sdk":
            out[name] = json.dumps(value)
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def resource_config(host: str, hosts: list[str], instance_type: str = "local") -> dict:
    """resourceconfig.json as SageMaker writes it on a training instance."""
    return {
        "current_host": host,
        "current_instance_type": instance_type,
        "current_group_name": GROUP,
        "hosts": list(hosts),
        "instance_groups": [{"instance_group_name": GROUP, "instance_type": instance_type, "hosts": list(hosts)}],
        "network_interface_name": "eth0",
    }


# -- the report -----------------------------------------------------------------------------

def report(workdir: Path) -> str:
    """One row per task: host, slot, state, steps, seconds, artifact path; then where previews are."""
    workdir = Path(workdir)
    s3 = workdir / "s3"
    rows = []
    for summary_file in sorted((s3 / "output").glob("*/summary.json")):
        summary = json.loads(summary_file.read_text())
        for t in summary.get("tasks", []):
            status = _read_json(s3 / "checkpoints" / t["task_id"] / "status.json") or {}
            model = s3 / "model" / t["task_id"]
            artifact = model / "pytorch_lora_weights.safetensors"
            slot = "-" if t.get("slot") is None else str(t["slot"])
            rows.append((t["task_id"], summary["host"], slot, t["outcome"], str(status.get("step", t.get("step", 0))),
                         f"{t.get('seconds', 0):.1f}",
                         _rel(artifact) if artifact.exists() else (t.get("error") or "-")[:70]))
    if not rows:
        return "no host wrote a summary (see W/logs/<host>.log)"
    head = ("task", "host", "slot", "state", "steps", "seconds", "artifact / error")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head[:6], widths)) + "  " + head[6]]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6] for r in rows]
    loads = []
    for summary_file in sorted((s3 / "output").glob("*/summary.json")):
        s = json.loads(summary_file.read_text())
        faults = sum(p.get("faults", 0) for p in s.get("slot_processes", []))
        loads.append(f"{s['host']}: {s.get('slots', 1)} slot(s), {s.get('base_model_loads', 0)} base model load(s), "
                     f"tasks' makespan {s.get('makespan_seconds', 0):.1f} s, host {s.get('seconds', 0):.1f} s"
                     + (f", {faults} slot process fault(s)" if faults else ""))
    lines.append("")
    lines.extend(loads)
    lines.append(f"previews: {_rel(s3 / 'checkpoints')}/<task_id>/previews/step-*/  "
                 f"models: {_rel(s3 / 'model')}/<task_id>/")
    return "\n".join(lines)


def write_job_page(workdir: Path) -> Path | None:
    """W/report.html (report/, imported here only): the job's page; a missing extra or a page that
    cannot be written is a warning, never the job's exit code."""
    try:
        from report.job import write_local_job_page

        page = write_local_job_page(Path(workdir))
    except ImportError as exc:
        print(f"job report not written: the report extra is not installed ({exc}); "
              "pip install 'lora-fanout[report]'", file=sys.stderr)
        return None
    except Exception as exc:  # the CLI's edge: the job's results stand without their page
        print(f"job report not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    print(f"job report: {_rel(page)}")
    return page


# -- helpers --------------------------------------------------------------------------------

def _files(root: Path):
    """(relative path, (size, mtime_ns)) of the files under ``root``, hidden/temporary ones skipped."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            yield path.relative_to(root).as_posix(), (st.st_size, st.st_mtime_ns)


def _with_slots(hyperparameters: dict, gpus_per_host: int | None) -> dict:
    """--gpus-per-host N is the job hyperparameter gpus_per_host, as SageMaker would pass it."""
    if gpus_per_host is None:
        return hyperparameters
    if gpus_per_host < 1:
        raise FanoutError(f"--gpus-per-host must be at least 1, got {gpus_per_host}")
    given = hyperparameters.get("gpus_per_host")
    if given is not None and str(given) != str(gpus_per_host):
        raise FanoutError(f"--gpus-per-host {gpus_per_host} and --hyperparameters gpus_per_host={given!r} differ; give one")
    return {**hyperparameters, "gpus_per_host": gpus_per_host}


def _read_hyperparameters(text: str) -> dict:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise FanoutError(f"--hyperparameters is not valid JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise FanoutError(f"--hyperparameters must be a JSON object, got {type(values).__name__}")
    return values


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _rel(path: Path, root: Path | None = None) -> str:
    """``path`` relative to the current folder when it is below it (shorter tables), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _forward_stops(job: LocalJob):
    """SIGTERM/SIGINT to the emulator reach every host as SIGTERM (a second one kills them)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    count = {"n": 0}

    def handle(signum, frame):
        count["n"] += 1
        job.stop(signal.SIGTERM if count["n"] == 1 else signal.SIGKILL)

    return {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_handlers(previous) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="fanout local", description=__doc__.split("\n\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
