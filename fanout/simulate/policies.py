"""The policies compared side by side, and `--search` over the launcher's knobs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from fanout.settings import Settings
from fanout.simulate.engine import Run, simulate
from fanout.simulate.inputs import Aws, Policy, TrainTimes, Workload
from fanout.simulate.report import summary

_S = Settings()

# launch_pending as shipped: Settings' defaults, run by an EventBridge rate(1 minute) schedule
PACKING = Policy(name="packing", max_tasks_per_job=_S.max_tasks_per_job, max_instances=_S.max_instances,
                 max_jobs_per_run=_S.max_jobs_per_run, launch_rate=_S.launch_rate)
# the AWS sample's pattern: every request its own one-instance job, as fast as the API allows
# (one launcher, 10 single-request jobs every 10 s = the 1 call/s limit, so it never throttles itself)
ONE_PER_REQUEST = Policy(name="one job per request", schedule_period_s=10.0, max_tasks_per_job=1, max_instances=1,
                         max_jobs_per_run=10)


def standard_policies(warm_pool_s: float = 600.0, instance_type: str = PACKING.instance_type) -> list[Policy]:
    """one job per request; packing; packing + warm pool; packing + spot (on ``instance_type``)."""
    policies = [ONE_PER_REQUEST, PACKING, replace(PACKING, name="packing + warm pool", warm_pool_s=warm_pool_s),
                replace(PACKING, name="packing + spot", spot=True)]
    return [replace(p, instance_type=instance_type) for p in policies]


def instance_policies(types: Sequence[str], aws: Aws, base: Policy = PACKING) -> list[Policy]:
    """Packing, on demand and on spot, on each of ``types`` with the GPUs held equal: the first
    type's instance quota and hosts per job, converted to each type's GPUs per host (4x
    ml.g5.xlarge against 1x ml.g5.12xlarge: the same 4 A10Gs a job, the same GPUs in the
    account). Quotas are per type in SageMaker; this compares types, not accounts."""
    first = replace(base, instance_type=types[0])
    out = []
    for name in types:
        policy = replace(base, instance_type=name)
        per_host = policy.slots()
        quota = max(1, aws.instance_quota * first.slots() // per_host)
        hosts = max(1, base.max_instances * first.slots() // per_host)
        policy = replace(policy, instance_quota=quota, max_instances=min(hosts, quota))
        label = f"{name} (K<={policy.max_instances} x {per_host} GPU{'s' if per_host > 1 else ''}, quota {quota})"
        out += [replace(policy, name=f"packing, {label}"), replace(policy, name=f"packing + spot, {label}", spot=True)]
    return out


def compare(policies: Sequence[Policy], workload: Workload = Workload(), times: TrainTimes = TrainTimes(),
            aws: Aws = Aws(), seed: int = 0) -> list[Run]:
    """Each policy on the same requests (same seed: same arrival times and task settings)."""
    return [simulate(workload, times, aws, p, seed) for p in policies]


@dataclass(frozen=True)
class SearchSpace:
    """Knob values `--search` tries (every combination; spot and warm pools never together)."""

    max_instances: tuple[int, ...] = (2, 4, 8, 16)
    max_tasks_per_job: tuple[int, ...] = (16, 32, 64, 128)
    max_jobs_per_run: tuple[int, ...] = (4, 8)
    schedule_period_s: tuple[float, ...] = (60.0,)
    modes: tuple[str, ...] = ("on-demand", "warm pool", "spot")
    warm_pool_s: float = 600.0
    holds: tuple[tuple[int, float], ...] = ((1, 0.0),)    # (min_batch, max_wait_s)


def candidates(space: SearchSpace, instance_type: str = PACKING.instance_type) -> list[Policy]:
    out = []
    for k, tasks, jobs, period, mode, (batch, wait) in itertools.product(
            space.max_instances, space.max_tasks_per_job, space.max_jobs_per_run, space.schedule_period_s,
            space.modes, space.holds):
        if tasks < k:
            continue                         # a job never gets more hosts than tasks
        name = f"K<={k}, <={tasks}/job, {jobs} jobs/run, every {period:g}s, {mode}" + \
            (f", hold to {batch} or {wait:g}s" if batch > 1 else "")
        out.append(Policy(name=name, schedule_period_s=period, max_tasks_per_job=tasks, max_instances=k,
                          max_jobs_per_run=jobs, min_batch=batch, max_wait_s=wait,
                          warm_pool_s=space.warm_pool_s if mode == "warm pool" else 0.0, spot=mode == "spot",
                          instance_type=instance_type))
    return out


def search(workload: Workload = Workload(), times: TrainTimes = TrainTimes(), aws: Aws = Aws(), seed: int = 0,
           space: SearchSpace = SearchSpace(), baseline: Policy = ONE_PER_REQUEST,
           p95_limit_s: float | None = None) -> dict[str, Any]:
    """The cheapest policy (cost per LoRA, nothing failed) whose p95 time-to-model is no worse
    than ``baseline``'s, or than ``p95_limit_s`` when given (the baseline itself when none is);
    every candidate's summary comes back too."""
    base = summary(simulate(workload, times, aws, baseline, seed))
    limit = base["time_to_model"]["p95"] if p95_limit_s is None else p95_limit_s
    tried = [summary(simulate(workload, times, aws, p, seed)) for p in candidates(space, baseline.instance_type)
             if p.max_instances <= p.quota(aws)]
    fit = [s for s in [base] + tried if s["failed"] == 0 and s["time_to_model"]["p95"] is not None
           and s["time_to_model"]["p95"] <= limit]
    best = min(fit, key=lambda s: (s["cost_per_lora"], s["time_to_model"]["p95"]), default=None)
    fastest = min(fit, key=lambda s: (s["time_to_model"]["p95"], s["cost_per_lora"]), default=None)
    return {"baseline": base, "p95_limit_s": limit, "best": best, "fastest": fastest, "tried": tried}


def settings_for(policy: Mapping[str, Any]) -> dict[str, str]:
    """The FANOUT_* values that make launch_pending run ``policy`` (a `summary()['policy']`)."""
    return {"FANOUT_MAX_INSTANCES": str(policy["max_instances"]),
            "FANOUT_MAX_TASKS_PER_JOB": str(policy["max_tasks_per_job"]),
            "FANOUT_MAX_JOBS_PER_RUN": str(policy["max_jobs_per_run"]),
            "FANOUT_SPOT": "true" if policy["spot"] else "false",
            "FANOUT_WARM_POOL_S": str(int(policy["warm_pool_s"])),
            "schedule": f"rate({int(policy['schedule_period_s'])} seconds)"}
