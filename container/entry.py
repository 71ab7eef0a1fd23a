"""`train`: what SageMaker runs in the image (`docker run IMAGE train`).

Reads the /opt/ml contract, validates everything that can be validated before a model loads
(job hyperparameters, the task list, the channels), picks this host's share of the task list,
and runs it on the host's slots: one warm worker process per GPU (``container.host``). Exit
codes:

    0    every task of this host's share ended completed, or failed with a recorded reason
         (on_task_failure=continue), a slot process that died under its task included
    1    a job-level error, or a task failed with on_task_failure=fail: /opt/ml/output/failure
         says why (at most 1024 characters)
    143  stopped by SIGTERM/SIGINT after saving state (a restarted job resumes)

Heavy imports (torch, diffusers) happen inside the functions that need them, so `train --help`
and the error paths stay fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_STOPPED = 0, 1, 143

log = logging.getLogger("container")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train",
        description="Train this host's share of a LoRA task list inside a SageMaker training job. "
        "Reads /opt/ml (or SAGEMAKER_BASE_DIR): channels tasks, model, images, class, eval; job "
        "hyperparameters from input/config/hyperparameters.json. Writes model/<task_id>/, "
        "checkpoints/<task_id>/, output/data/<host>/summary.json and output/failure.",
        epilog="For one task without any container, use `python -m train`.",
    )
    p.add_argument("--base-dir", type=Path, default=None,
                   help="root of the SageMaker tree (default: $SAGEMAKER_BASE_DIR or /opt/ml)")
    p.add_argument("--log-level", default=os.environ.get("FANOUT_LOG_LEVEL", "INFO"),
                   help="log level of the container's own lines (default: INFO)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    from container.env import BASE_DIR_ENV, base_dir_from_environ
    from container.signals import StopFlag

    if args.base_dir is not None:
        os.environ[BASE_DIR_ENV] = str(args.base_dir.resolve())
    base_dir = base_dir_from_environ()
    stop = StopFlag().install()
    return run_job(base_dir, stop)


def run_job(base_dir: Path, stop) -> int:
    """The whole job on this host; the one broad ``except`` turns any error into the failure file."""
    from container.records import write_failure

    failure_file = base_dir / "output" / "failure"
    started = time.monotonic()
    try:
        code, headline, problems = _run(base_dir, stop)
    except Exception as exc:  # the outer edge: every error becomes a failure file + exit code
        headline, problems = _describe(exc)
        code = EXIT_FAILED
        if not _expected(exc):
            log.error("internal error:\n%s", traceback.format_exc())
    if code != EXIT_OK:
        reason = write_failure(failure_file, headline, problems)
        log.error("job failed on this host: %s", reason.replace("\n", " "))
    log.info("done in %.1f s, exit %d", time.monotonic() - started, code)
    return code


def _run(base_dir: Path, stop) -> tuple[int, str, list[str]]:
    from container.env import find_tasks_file, read_env
    from container.errors import ContractError
    from container.quality import check_eval_channel
    from container.settings import ContainerConfig
    from container.taskconfig import split_hyperparameters
    from fanout.plan import plan_tasks
    from fanout.tasks import load_job_tasks

    env = read_env(base_dir)
    log.info("host %s (index %d of %d hosts)", env.current_host, env.host_index, len(env.hosts))
    # 1. Everything checkable before any model loads: hyperparameters, channels, task list.
    container_hp, training_hp = split_hyperparameters(env.hyperparameters)
    settings = ContainerConfig.from_dict(container_hp)
    job_cfg = _job_config(training_hp)
    for name in ("tasks", "model"):
        if env.channel(name) is None or not env.channel(name).exists():
            raise ContractError(f"channel {name!r} is missing (expected {env.base_dir}/input/data/{name}/)")
    bad_modes = [n for n, mode in env.input_modes.items() if mode == "Pipe"]
    if bad_modes:
        raise ContractError(f"channel(s) {bad_modes} use Pipe mode; this container reads folders: use File or FastFile")
    # A problem of one task's own fields fails that task alone (its status.json says why).
    tasks, rejected = load_job_tasks(find_tasks_file(env.channel("tasks")))
    # 2. This host's share: every host computes the same plan from the same inputs, as fanout
    #    plans it (K hosts x G slots, tasks costed by the base's family; pinned hosts kept).
    devices = _slot_devices(settings)
    plan = plan_tasks(tasks, len(env.hosts), training_hp, slots_per_host=len(devices), **_family(env))
    by_id = {t.task_id: t for t in tasks}
    share = [by_id[tid] for tid in plan.share(env.host_index)]
    _log_share(env, plan, share, len(tasks))
    # 3. The slots; the job's settings checked against the base's family before any load.
    host, trainer = _make_host(env, settings, training_hp, job_cfg, stop, _task_reasons(rejected), devices)
    _check_family(trainer, job_cfg, env.channel("model"))
    check_eval_channel(trainer, env.channel("eval"))  # optional scorer models: docs/quality.md
    summary = host.run(share)
    log.info("summary (%s):\n%s", env.output_data_dir / "summary.json", _table(summary.tasks))
    if summary.state == "interrupted":
        done = sum(t.outcome in ("completed", "restored") for t in summary.tasks)
        return EXIT_STOPPED, (f"stopped by {stop.signal_name or 'a stop request'} on {env.current_host} after "
                              f"{done} of {len(share)} tasks; state saved, a restart resumes"), []
    if summary.state == "failed":
        failed = [t for t in summary.tasks if t.outcome == "failed"]
        return EXIT_FAILED, (f"task {failed[-1].task_id!r} failed on {env.current_host} "
                             f"(on_task_failure=fail): {failed[-1].error}"), []
    return EXIT_OK, "", []


def _task_reasons(rejected) -> dict[str, str]:
    """{task_id: reason} for tasks whose own fields are malformed, naming the file, not its path."""
    from container.records import failure_reason

    def short(problem: str) -> str:
        source, _, rest = problem.partition(":")
        return f"{Path(source).name}:{rest}"

    return {tid: failure_reason("malformed task in the task list:", [short(p) for p in problems])
            for tid, problems in rejected.items()}


def _job_config(training_hp):
    """Unknown names and bad values of the job's hyperparameters fail the job, listing valid names."""
    from container.errors import JobConfigError
    from container.taskconfig import job_train_config
    from train.errors import ConfigError

    try:
        return job_train_config(training_hp)
    except ConfigError as exc:
        raise JobConfigError(str(exc)) from exc


def _slot_devices(settings):
    """One device per slot: every visible GPU (or gpus_per_host of them; CPU slots without one)."""
    from container.devices import host_threads, slot_devices, visible_gpus

    gpus = visible_gpus()
    devices = slot_devices(settings.gpus_per_host, gpus, host_threads())
    log.info("%d slot(s): %s, %d CPU thread(s) each (%d GPU(s) visible)", len(devices),
             ", ".join(d.label for d in devices), devices[0].threads, len(gpus))
    return devices


def _family(env) -> dict:
    """The base's family for the plan's task costs (fanout.families, from model_index.json);
    none when it cannot be read: the family layer then says why, before any model loads."""
    from fanout.errors import FanoutError
    from fanout.families import resolve_family

    try:
        found = resolve_family(folder=env.channel("model"))
    except FanoutError:
        return {}
    return {"family": found[0], "variant": found[1]} if found else {}


def _make_host(env, settings, training_hp, job_cfg, stop, rejected, devices):
    """The host and its slots: one process per GPU (or gpus_per_host CPU slots), pinned there."""
    from functools import partial

    from container.host import Host
    from container.slots import ProcessSlot, SlotSpec
    from train.api import LocalTrainer

    # The base loads once per slot in the job's precision (and quantization): what the job leaves
    # unset is the base family's recipe on this machine, as each task's config resolves it.
    job_cfg = _job_recipe(job_cfg, env.channel("model"))
    trainer = LocalTrainer(job_cfg.mixed_precision, base_quantization=job_cfg.base_quantization)
    spec = SlotSpec(env=env, settings=settings, job_hp=training_hp, trainer=trainer,
                    mixed_precision=job_cfg.mixed_precision, rejected=rejected,
                    log_level=logging.getLevelName(logging.getLogger().level))
    return Host(env, settings, devices, partial(ProcessSlot, spec=spec), stop), trainer


def _job_recipe(job_cfg, model_dir):
    from container.errors import JobConfigError
    from train.errors import ConfigError
    from train.recipes import resolve_for_model

    try:
        return resolve_for_model(job_cfg, model_dir)
    except ConfigError as exc:
        raise JobConfigError(str(exc)) from exc


def _check_family(trainer, job_cfg, model_dir) -> None:
    """A job setting the base model's family cannot use fails the job, before any model loads."""
    from container.errors import JobConfigError
    from train.errors import ConfigError

    try:
        trainer.check_config(job_cfg, model_dir, source="hyperparameters.json")
    except ConfigError as exc:
        raise JobConfigError(str(exc)) from exc


def _log_share(env, plan, share, total: int) -> None:
    host = plan.hosts[env.host_index] if env.host_index < len(plan.hosts) else None
    ids = ", ".join(t.task_id for t in share) or "(none)"
    cost = f"; estimated cost {host.cost:.0f} of makespan {plan.makespan:.0f}" if host else ""
    log.info("share of %s: %d of %d tasks: %s%s", env.current_host, len(share), total, ids, cost)


def _table(outcomes) -> str:
    from container.records import outcome_table

    return outcome_table(outcomes)


def _describe(exc: Exception) -> tuple[str, list[str]]:
    """Failure headline and problem list for a job-level error."""
    from fanout.errors import TaskListError

    if isinstance(exc, TaskListError):
        name = Path(exc.source).name
        problems = [p.replace(exc.source, name) for p in exc.problems]  # fanout orders them
        return f"the task list {name} is malformed ({len(problems)} problem(s)); no task was trained:", problems
    if _expected(exc):
        return str(exc), []
    return f"internal error: {type(exc).__name__}: {exc}", []


def _expected(exc: Exception) -> bool:
    from container.errors import ContainerError
    from fanout.errors import FanoutError
    from train.errors import TrainError

    return isinstance(exc, (ContainerError, FanoutError, TrainError))


def configure_logging(level: str, tag: str = "") -> None:
    """Container log lines: ``time LEVEL logger: message``; a slot process tags its own (``[slot 1]``)."""
    # Line-buffered so CloudWatch (and `fanout local`) see each line as it is written.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    where = f" [{tag}]" if tag else ""
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO), stream=sys.stdout,
        format=f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S",
    )


if __name__ == "__main__":
    sys.exit(main())
