"""The event loop: requests arrive -> launch_pending's decision -> CreateTrainingJob -> hosts -> models.

A heap of (time, sequence, kind, payload) events, not SimPy: fanout/ must import only the
standard library and boto3 (the Lambda zip), and every process here is a short chain of
timed steps whose state fits in a few fields, so callbacks on a heap are as short as
generator processes would be and need nothing installed. The sequence number makes equal
times pop in scheduling order, so a seed fixes the whole run.

Only AWS and time are simulated. What the launcher decides is the project's own code, called
through the `fanout.plan` module at run time: `claim_limit` (how many it claims),
`launch_batches` (split_backlog + instances_for: which jobs, which K) and `plan_tasks` (which
host trains which task, as the container computes it). `hold_for_batch` is the one what-if
knob launch_pending does not have (it launches whatever is pending when it runs).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from fanout import plan
from fanout.simulate.inputs import Aws, Policy, SimulationError, TrainTimes, Workload, arrivals
from fanout.tasks import TaskSpec


def hold_for_batch(pending: int, oldest_wait_s: float, min_batch: int, max_wait_s: float) -> bool:
    """Wait for more requests before launching? Only while fewer than ``min_batch`` are
    pending and the oldest has waited less than ``max_wait_s`` (min_batch 1: never wait)."""
    return 0 < pending < min_batch and oldest_wait_s < max_wait_s


@dataclass(eq=False)
class Request:
    task: TaskSpec
    arrival: float
    seconds: float            # true time of the task on one host
    checkpoint_s: float       # work between two resume states
    queued: float = 0.0       # updated_at while PENDING: the by-status index order
    retries: int = 0
    done: float | None = None
    failed: str | None = None
    endings: int = 0          # completed or failed: must end exactly once


@dataclass(eq=False)
class Job:
    k: int
    spot: bool
    created: float
    hosts: list[list[list[Any]]]   # per GPU slot (K x G lanes): [request, remaining seconds] in run order
    size: int = 0                  # tasks in the job
    ready: float = 0.0             # billing starts (TrainingStartTime)
    first_task: float = 0.0
    billed_s: float = 0.0          # instance-seconds
    busy_s: float = 0.0            # GPU-seconds spent in tasks
    slots: int = 1                 # GPU slots per host
    failed: list[Request] = field(default_factory=list)


@dataclass(eq=False)     # identity: two pools/jobs alike are still two
class Pool:
    k: int
    since: float
    expires: float
    taken: bool = False


@dataclass(eq=False)
class Invocation:
    batches: list[tuple[list[Request], int]]
    index: int = 0
    attempt: int = 0
    next_call: float = 0.0


@dataclass
class Run:
    """What happened: every request, job and API call of one simulated policy."""

    policy: Policy
    requests: list[Request]
    jobs: list[Job] = field(default_factory=list)
    calls: list[float] = field(default_factory=list)
    instances: list[tuple[float, int, int]] = field(default_factory=lambda: [(0.0, 0, 0)])  # (t, in use, warm idle)
    interruptions: list[float] = field(default_factory=list)   # work lost per host per interruption (s)
    interrupt_events: int = 0
    throttles: int = 0
    refusals: int = 0
    cost: float = 0.0
    pool_s: float = 0.0            # instance-seconds billed in warm pools


class Simulation:
    def __init__(self, workload: Workload, times: TrainTimes, aws: Aws, policy: Policy, seed: int = 0,
                 job_hyperparameters: Mapping[str, Any] | None = None):
        policy.check(aws)
        aws.check()
        times.check()
        self.times, self.aws, self.policy, self.hp = times, aws, policy, dict(job_hyperparameters or {})
        self.rng = random.Random(f"{seed}:{policy.name}")
        family, variant, speed = workload.family, workload.variant, policy.instance().gpu.speed
        self.family, self.variant, self.slots = times.family(family), variant, policy.slots()
        self.price, self.quota = policy.price(aws), policy.quota(aws)
        self.load_s = times.slot_load_seconds(family)      # each slot loads its base in parallel with the others
        self.run_ = Run(policy, [Request(t, at, times.task_seconds(t, family, speed, variant),
                                         times.checkpoint_seconds(t, family, speed, variant), at)
                                 for at, t in arrivals(workload, seed)])
        self.heap: list = []
        self.seq = itertools.count()
        self.now = 0.0
        self.pending: deque[Request] = deque()
        self.pools: list[Pool] = []
        self.in_use = 0
        self.tokens, self.token_t = aws.api_burst, 0.0
        self.open = len(self.run_.requests)

    def at(self, t: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, payload))

    def run(self) -> Run:
        for r in self.run_.requests:
            self.at(r.arrival, "arrive", r)
        if self.policy.schedule_period_s > 0:
            self.at(0.0, "tick")
        handlers = {"arrive": self._arrive, "tick": self._tick, "call": self._call, "end": self._end,
                    "interrupt": self._interrupt, "restart": self._restart, "expire": self._expire}
        while self.heap:
            t, _, kind, payload = heapq.heappop(self.heap)
            if t > self.aws.horizon_s:
                break
            self.now = t
            handlers[kind](payload)
        for r in self.run_.requests:
            if r.done is None and r.failed is None:
                self._finish(r, failed="not done by the horizon" if self.heap else "never launched")
        return self.run_

    # -- the launcher ------------------------------------------------------------------------
    def _arrive(self, r: Request) -> None:
        self.pending.append(r)
        if self.policy.on_arrival:
            self._launch_pending()

    def _tick(self, _=None) -> None:
        self._launch_pending()
        if self.open:
            self.at(self.now + self.policy.schedule_period_s, "tick")

    def _launch_pending(self) -> None:
        """One launch_pending run: claim the oldest PENDING, cut them into jobs, create them."""
        p = self.policy
        if not self.pending or hold_for_batch(len(self.pending), self.now - self.pending[0].queued,
                                               p.min_batch, p.max_wait_s):
            return
        claimed = [self.pending.popleft() for _ in range(min(len(self.pending),
                                                             plan.claim_limit(p.max_tasks_per_job, p.max_jobs_per_run)))]
        by_id = {r.task.task_id: r for r in claimed}
        batches = plan.launch_batches([r.task for r in claimed], p.max_tasks_per_job, p.max_instances, self.hp,
                                      slots_per_host=self.slots, family=self.family, variant=self.variant)
        self._call(Invocation([([by_id[t.task_id] for t in batch], k) for batch, k in batches], next_call=self.now))

    def _call(self, inv: Invocation) -> None:
        """The next CreateTrainingJob of a run: its RateLimiter, then the account's rate, then quota."""
        if inv.index >= len(inv.batches):
            return
        if inv.attempt == 0:
            if self.now < inv.next_call - 1e-9:
                return self.at(inv.next_call, "call", inv)
            inv.next_call = self.now + 1.0 / self.policy.launch_rate
        requests, k = inv.batches[inv.index]
        self.run_.calls.append(self.now)
        if not self._token():
            self.run_.throttles += 1
            inv.attempt += 1
            if inv.attempt < self.aws.max_attempts:     # botocore's standard backoff, then retry
                return self.at(self.now + self.rng.random() * min(20.0, 2.0 ** inv.attempt), "call", inv)
            self._release(requests)                     # retries spent: launch_pending releases the batch
        else:
            pool = self._take_pool(k) if self.policy.warm_pool_s else None
            if pool is None and self.in_use + k > self.quota:
                self.run_.refusals += 1                 # ResourceLimitExceeded -> CapacityError -> released
                self._release(requests)
            else:
                self._start(requests, k, pool)
        inv.index, inv.attempt = inv.index + 1, 0
        self.at(max(self.now, inv.next_call), "call", inv)

    def _token(self) -> bool:
        self.tokens = min(self.aws.api_burst, self.tokens + (self.now - self.token_t) * self.aws.api_tps)
        self.token_t = self.now
        if self.tokens >= 1.0 - 1e-9:
            self.tokens -= 1.0
            return True
        return False

    def _release(self, requests: list[Request]) -> None:
        for r in requests:                  # back to PENDING: updated_at = now, so behind the others
            r.queued = self.now
            self.pending.append(r)

    # -- SageMaker ---------------------------------------------------------------------------
    def _start(self, requests: list[Request], k: int, pool: Pool | None) -> None:
        assignment = plan.plan_tasks([r.task for r in requests], k, self.hp, slots_per_host=self.slots,
                                     family=self.family, variant=self.variant)
        by_id = {r.task.task_id: r for r in requests}
        lanes = [[[by_id[t], by_id[t].seconds] for t in slot] for host in assignment.hosts for slot in host.slots]
        job = Job(k, self.policy.spot, self.now, lanes, size=len(requests), slots=self.slots)
        self.run_.jobs.append(job)
        if pool is None:
            self.in_use += k
            self._track()
            self._segment(job, self.now + self.aws.cold_provision_s, self.aws.cold_start_s + self.load_s)
        else:
            self._segment(job, self.now + self.aws.warm_provision_s, self.aws.warm_start_s + self.load_s)

    def _segment(self, job: Job, ready: float, start_s: float) -> None:
        """Hosts bill from ``ready`` and train from ready + start_s until the job ends or spot
        capacity is taken back, whichever comes first."""
        job.ready, job.first_task = ready, ready + start_s
        end = job.first_task + max(sum(e[1] for e in host) for host in job.hosts) + self.aws.job_end_s
        if job.spot and self.aws.interruptions_per_hour > 0:
            cut = ready + self.rng.expovariate(self.aws.interruptions_per_hour * job.k / 3600.0)
            if cut < end:
                return self.at(cut, "interrupt", job)
        self.at(end, "end", job)

    def _advance(self, job: Job, until: float) -> None:
        """Run every host's tasks up to ``until``; an unfinished task keeps what its last
        resume state holds (the container restarts it from there)."""
        for host in job.hosts:
            t, left = job.first_task, []
            for entry in host:
                request, remaining = entry
                if t + remaining <= until:
                    t += remaining
                    job.busy_s += remaining
                    self._task_done(job, request, t)
                elif t < until:
                    progress = until - t
                    worked = request.seconds - remaining + progress
                    saved = math.floor(worked / request.checkpoint_s + 1e-9) * request.checkpoint_s
                    job.busy_s += progress
                    self.run_.interruptions.append(worked - saved)
                    left.append([request, request.seconds - saved])
                    t = until
                else:
                    left.append(entry)
            host[:] = left

    def _interrupt(self, job: Job) -> None:
        self._advance(job, self.now)
        self.run_.interrupt_events += 1
        job.billed_s += (self.now - job.ready) * job.k
        self.at(self.now + self.aws.spot_restart_s, "restart", job)

    def _restart(self, job: Job) -> None:
        self._segment(job, self.now + self.aws.cold_provision_s, self.aws.cold_start_s + self.load_s)

    def _end(self, job: Job) -> None:
        self._advance(job, math.inf)
        job.billed_s += (self.now - job.ready) * job.k
        price = self.price * ((1.0 - self.aws.spot_discount) if job.spot else 1.0)
        self.run_.cost += job.billed_s / 3600.0 * price
        if self.policy.warm_pool_s:
            pool = Pool(job.k, self.now, self.now + self.policy.warm_pool_s)
            self.pools.append(pool)
            self.at(pool.expires, "expire", pool)
            self._track()
        else:
            self.in_use -= job.k
            self._track()
        for r in job.failed:                # record_job_state: retry while retries remain
            if r.retries < self.aws.max_retries:
                r.retries += 1
                self._release([r])
            else:
                self._finish(r, failed=f"task failed {r.retries + 1} times")

    def _task_done(self, job: Job, r: Request, t: float) -> None:
        if self.aws.task_failure_rate and self.rng.random() < self.aws.task_failure_rate:
            job.failed.append(r)
        else:
            r.done = t + self.aws.delivery_s
            self._finish(r)

    def _finish(self, r: Request, failed: str | None = None) -> None:
        r.failed, r.endings = failed, r.endings + 1
        self.open -= 1

    # -- warm pools --------------------------------------------------------------------------
    def _take_pool(self, k: int) -> Pool | None:
        """A matching (same type and count) Available warm pool, most recently freed first."""
        for pool in reversed(self.pools):
            if pool.k == k:
                self.pools.remove(pool)
                pool.taken = True
                self._bill_pool(pool, self.now)
                return pool
        return None

    def _expire(self, pool: Pool) -> None:
        if not pool.taken:
            self.pools.remove(pool)
            self._bill_pool(pool, self.now)
            self.in_use -= pool.k
            self._track()

    def _bill_pool(self, pool: Pool, until: float) -> None:
        seconds = (until - pool.since) * pool.k
        self.run_.pool_s += seconds
        self.run_.cost += seconds / 3600.0 * self.price

    def _track(self) -> None:
        self.run_.instances.append((self.now, self.in_use, sum(p.k for p in self.pools)))


def simulate(workload: Workload = Workload(), times: TrainTimes = TrainTimes(), aws: Aws = Aws(),
             policy: Policy = Policy(), seed: int = 0, job_hyperparameters: Mapping[str, Any] | None = None) -> Run:
    """Simulate one policy on one workload (deterministic for a seed)."""
    if not isinstance(policy, Policy):
        raise SimulationError(f"policy must be a Policy, got {type(policy).__name__}")
    return Simulation(workload, times, aws, policy, seed, job_hyperparameters).run()
