"""`fanout validate | plan | submit | status | bootstrap | local | simulate | report` (python -m fanout ...).

Each subcommand turns its arguments into the library's config objects and calls one
function; FanoutError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from fanout.demand import memory_gib, task_settings
from fanout.errors import FanoutError, TaskListError
from fanout.families import FAMILIES, UNIT_S, FamilySpec, resolve_family
from fanout.fit import job_fit_problems
from fanout.hyperparameters import job_name_problems, job_value_problems, task_name_problems, task_value_problems
from fanout.instances import InstanceType, instance_type, slots_per_host
from fanout.plan import PlanConfig, plan_tasks, round_robin
from fanout.request import LaunchConfig
from fanout.tasks import load_tasks

DEFAULT_INSTANCE_TYPE = LaunchConfig.instance_type      # Settings has the same default


def _key_values(pairs: Sequence[str], what: str) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that is JSON (400, 1e-4, true) is read as such."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FanoutError(f"{what} must be KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _refused(file: str, problems: Sequence[str]) -> int:
    """Each problem on stderr, then their count; validate's exit status 2."""
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{file}: {len(problems)} problem(s)", file=sys.stderr)
    return 2


def cmd_validate(args) -> int:
    try:
        tasks = load_tasks(args.file)
    except TaskListError as exc:
        return _refused(args.file, exc.problems)
    hp = _key_values(args.hp, "--hp")
    problems = job_name_problems(hp, "--hp") + task_name_problems(tasks, args.file)
    # values once the names are right: train's own checks, before anything is paid for
    problems = problems or job_value_problems(hp, "--hp") + task_value_problems(tasks, args.file, hp)
    if problems:
        return _refused(args.file, problems)
    job = _job(args, hp)
    fit = job_fit_problems(tasks, hp, job.family, job.instance, PlanConfig(), args.file) if job.family else []
    if fit:
        return _refused(args.file, fit)
    if args.instances:
        plan_tasks(tasks, args.instances)        # explicit host fields checked against K
    print(f"{args.file}: {len(tasks)} task(s) OK{_fit_note(job, tasks, hp)}")
    if job.family is None:
        print("note: GPU memory not checked: pass --family or --model", file=sys.stderr)
    return 0


@dataclass(frozen=True)
class _Job:
    """What the plan and the fit check need to know of the job beyond its task list."""

    instance: InstanceType
    slots: int
    family: FamilySpec | None = None     # None: neither --family nor --model was given
    variant: str = ""


def _job(args, hp) -> _Job:
    """The instance type (known to the table), its slots (gpus_per_host) and the family
    (--family, or --model's model_index.json)."""
    instance = instance_type(args.instance_type or DEFAULT_INSTANCE_TYPE, "--instance-type")
    found = resolve_family(args.family, folder=args.model)
    return _Job(instance, slots_per_host(instance, hp.get("gpus_per_host")), *(found or ()))


def _fit_note(job: _Job, tasks, hp) -> str:
    if job.family is None:
        return ""
    need = max(memory_gib(job.family, task_settings(t, hp, job.family, PlanConfig())).need for t in tasks)
    return (f"; {job.family.name} fits {job.instance.name}: about {need:.1f} GiB of "
            f"{job.instance.gpu_memory_gib:.1f} GiB per {job.instance.gpu.model} at most")


def format_plan(plan, baseline=None, instance: InstanceType | None = None) -> str:
    g = plan.slots_per_host
    rows = [f"{'host':>4}  {'tasks':>5}  {'work':>10}  {'makespan':>10}  task ids"]
    for h in plan.hosts:
        rows.append(f"{h.index:>4}  {len(h.task_ids):>5}  {h.cost:>10.1f}  {h.makespan:>10.1f}  {_ids(h.task_ids)}")
        if g > 1:
            for slot, (ids, load) in enumerate(zip(h.slots, plan.slot_loads(h.index))):
                rows.append(f"{'':>4}  {len(ids):>5}  {load:>10.1f}  {'':>10}  slot {slot}: {_ids(ids)}")
    where = f"{len(plan.hosts)} host(s) x {g} GPU slot(s)" + (f" of {instance.name}" if instance else "")
    rows.append(f"makespan {plan.makespan:.1f}  lower bound {plan.lower_bound:.1f}  utilisation {plan.utilisation:.1%}  "
                f"({where}; family {plan.family}; cost unit: one SD 1.5 512px training step on an A10G, {UNIT_S:.2f} s)")
    if baseline is not None:
        rows.append(f"round-robin would take {baseline.makespan:.1f} ({baseline.makespan / max(plan.makespan, 1e-9):.2f}x)")
    idle = sum(1 for h in plan.hosts if not h.task_ids)
    if idle:
        rows.append(f"warning: {idle} host(s) get no task but are billed; use fewer --instances")
    idle_slots = sum(1 for h in plan.hosts if h.task_ids for s in h.slots if not s)
    if idle_slots:
        rows.append(f"warning: {idle_slots} GPU slot(s) of busy hosts get no task but are billed; "
                    "use fewer --instances or a type with fewer GPUs")
    return "\n".join(rows)


def _ids(ids) -> str:
    return ", ".join(ids[:6]) + (f", ... (+{len(ids) - 6})" if len(ids) > 6 else "")


def cmd_plan(args) -> int:
    tasks = load_tasks(args.file)
    hp = _key_values(args.hp, "--hp")
    job = _job(args, hp)
    fit = job_fit_problems(tasks, hp, job.family, job.instance, PlanConfig(), args.file) if job.family else []
    if fit:
        raise FanoutError("; ".join(fit))
    options = dict(slots_per_host=job.slots, family=job.family or FAMILIES["sd"], variant=job.variant)
    plan = plan_tasks(tasks, args.instances, hp, **options)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(format_plan(plan, round_robin(tasks, args.instances, hp, **options), job.instance))
        if job.family is None:
            print("note: no --family or --model: tasks are costed as sd and GPU memory is not checked", file=sys.stderr)
    return 0


def cmd_status(args) -> int:
    from fanout.launcher import S3Objects
    from fanout.settings import make_client
    from fanout.status import job_status

    info = job_status(make_client("sagemaker", args.region, args.endpoint_url),
                      S3Objects(make_client("s3", args.region, args.endpoint_url)), args.job)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['job']}: {info['state']} ({info['secondary']})" + (f" - {info['failure_reason']}" if info["failure_reason"] else ""))
    print(f"{'task':<32} {'state':<10} {'host':>4} {'step':>6} {'loss':>8}  {'verdict':<14} error")
    for row in info["tasks"]:
        loss = f"{row['loss']:.4f}" if isinstance(row["loss"], (int, float)) else ""
        print(f"{row['task_id']:<32} {row['state']:<10} {row['host'] if row['host'] is not None else '':>4} "
              f"{row['step'] if row['step'] is not None else '':>6} {loss:>8}  {row.get('verdict') or '':<14} {row['error'] or ''}")
    return 0


def cmd_bootstrap(args) -> int:
    from fanout.bootstrap import bootstrap
    from fanout.settings import Settings

    settings = Settings.from_env()
    for name, created in bootstrap(settings, settings.client("s3"), settings.client("dynamodb")).items():
        print(f"{name}: {'created' if created else 'exists'}")
    return 0


def cmd_local(args) -> int:
    return _local().run(args)


def _local():
    try:
        local = importlib.import_module("fanout.local")
    except ImportError as exc:
        raise FanoutError(f"`fanout local` is not available in this install (fanout.local: {exc})") from exc
    return local


def _add_local(sub) -> None:
    parser = sub.add_parser("local", help="run a K-host job on this machine (hosts as train subprocesses)")
    parser.set_defaults(func=cmd_local)
    try:
        _local().add_arguments(parser)
    except FanoutError:
        pass                      # main() reports it when `local` is actually asked for


def cmd_report(args) -> int:
    try:
        report_cli = importlib.import_module("report.cli")
        importlib.import_module("report.render").environment()  # Jinja2 and the templates, before any work
        importlib.import_module("matplotlib")
    except ImportError as exc:
        raise FanoutError(f"`fanout report` needs the report extra (Jinja2, matplotlib, Pillow), which is not "
                          f"installed ({exc}); pip install 'lora-fanout[report]'") from exc
    return report_cli.run(args)


def _add_report(sub) -> None:
    # Declared here, not in report/: `fanout --help` and the Lambda zip never need the report extra.
    p = sub.add_parser("report", help="write a job's report.html (a SageMaker job from S3, or a `fanout local` workdir)")
    p.add_argument("job", help="training job name, or the --workdir of a `fanout local` run")
    p.add_argument("--out", help="folder for a SageMaker job's page and its task pages (default: ./JOB_NAME-report)")
    p.add_argument("--upload", action="store_true",
                   help="also put the page beside the job's checkpoint prefix in S3 (its task links resolve there)")
    p.add_argument("--price-per-hour", type=float, default=None,
                   help="$ per instance-hour (default: the simulator's price table for the instance type)")
    _aws_args(p)
    p.set_defaults(func=cmd_report)


def cmd_simulate(args) -> int:
    from fanout.simulate.cli import run
    return run(args)


def _add_simulate(sub) -> None:
    from fanout.simulate.cli import add_arguments

    parser = sub.add_parser("simulate", help="what a spike of users costs and waits under each launch policy")
    add_arguments(parser)
    parser.set_defaults(func=cmd_simulate)


def _job_args(parser) -> None:
    parser.add_argument("--instance-type", default=None, metavar="TYPE",
                        help=f"training instance type: GPUs per host and GPU memory (default {DEFAULT_INSTANCE_TYPE})")
    parser.add_argument("--family", default="", metavar="NAME",
                        help=f"model family of the base ({', '.join(FAMILIES)}; NAME/VARIANT allowed): costs and the "
                             "GPU-memory fit")
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="the base model's folder: its model_index.json names the family (instead of --family)")


def _aws_args(parser) -> None:
    parser.add_argument("--region", default="", help="AWS region (default: boto3's chain)")
    parser.add_argument("--endpoint-url", default="", help="AWS endpoint override (e.g. a moto server)")


def build_parser() -> argparse.ArgumentParser:
    from fanout.submit import add_submit

    parser = argparse.ArgumentParser(prog="fanout", description="Plan, launch and track K-instance LoRA training jobs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a task list; every problem names line, task and field")
    p.add_argument("file")
    p.add_argument("--instances", type=int, default=0, help="also check explicit host fields against K")
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="a job hyperparameter to check as submit would send it (repeatable)")
    _job_args(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("plan", help="show which host and GPU slot runs which task, and the expected makespan")
    p.add_argument("file")
    p.add_argument("--instances", "-k", type=int, required=True, help="instances in the job (K)")
    p.add_argument("--hp", action="append", metavar="KEY=VALUE",
                   help="job-level hyperparameter (repeatable), e.g. gpus_per_host=2")
    p.add_argument("--json", action="store_true", help="machine-readable plan")
    _job_args(p)
    p.set_defaults(func=cmd_plan)
    add_submit(sub, _aws_args, _key_values)
    p = sub.add_parser("status", help="a job's state and each task's state from its checkpoints")
    p.add_argument("job")
    p.add_argument("--json", action="store_true")
    _aws_args(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("bootstrap", help="create the FANOUT_BUCKET bucket and both tables if absent")
    p.set_defaults(func=cmd_bootstrap)
    _add_local(sub)
    _add_simulate(sub)
    _add_report(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["local"]:
        try:
            _local()
        except FanoutError as exc:
            print(f"fanout local: error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FanoutError as exc:
        print(f"fanout {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:   # AWS errors etc.: one readable line, not a traceback
        from botocore.exceptions import BotoCoreError, ClientError
        if isinstance(exc, (ClientError, BotoCoreError)):
            print(f"fanout {args.command}: AWS error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
