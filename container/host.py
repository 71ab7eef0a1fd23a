"""The host: this host's share of the task list run on its slots, one host-local queue.

    share, in plan order (longest first)   -> the queue
    while tasks are queued or running:
        every idle slot takes the next task  (its process starts on first use: one base
                                              model load per slot)
        wait for an outcome or a slot process ending
        outcome                              -> recorded, summary.json rewritten, slot idle
        process fault under a task           -> container.faults: a fresh process on the same
                                                slot runs the task again, once, from its saved
                                                state; a slot that keeps faulting is retired
    SIGTERM                                  -> every slot saves its running task and stops;
                                                nothing new starts; the rest is not_started

A slot asks for its next task only when it is free, so a slow task on one GPU holds no task
behind it. The host itself never imports torch: whatever happens in a slot, it is still
there to record the outcome and write the summary.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, Callable, Sequence

from container.devices import SlotDevice
from container.env import SageMakerEnv
from container.faults import MAX_SLOT_FAULTS, death_reason
from container.records import (HostSummary, TaskOutcome, now_iso, task_status_extra, write_abandoned_status,
                               write_failed_status)
from container.settings import ContainerConfig
from container.slots import SharedStop, ask_exit

if TYPE_CHECKING:
    from fanout.tasks import TaskSpec

log = logging.getLogger("container.host")

# SageMaker sends SIGKILL 120 s after SIGTERM; a slot that has not saved its task by then is
# killed here first, so the summary and the failure file are still written.
STOP_GRACE_SECONDS = 100.0
POLL_SECONDS = 0.5


@dataclass
class Slot:
    """The host's record of one slot: its device, its current process and what it has done."""

    device: SlotDevice
    handle: Any = None  # container.slots.ProcessSlot (or ThreadSlot); None: no process now
    task: "TaskSpec | None" = None  # running now
    retry: "TaskSpec | None" = None  # runs next on this slot's fresh process
    pid: int | None = None
    starts: int = 0
    faults: int = 0
    tasks: int = 0
    loads: int = 0  # base model loads of earlier processes of this slot
    load_seconds: float = 0.0
    process_loads: tuple[int, float] = (0, 0.0)  # the current process's, as it last reported
    busy_seconds: float = 0.0
    retired: str | None = None

    def to_dict(self) -> dict:
        state = "retired" if self.retired else "busy" if self.task else "idle" if self.handle else "stopped"
        return {"slot": self.device.index, "device": self.device.label, "threads": self.device.threads,
                "pid": self.pid, "state": state, "starts": self.starts, "faults": self.faults, "tasks": self.tasks,
                "base_model_loads": self.loads + self.process_loads[0],
                "base_model_seconds": round(self.load_seconds + self.process_loads[1], 3),
                "busy_seconds": round(self.busy_seconds, 3), "retired": self.retired}

    def death(self) -> str:
        """Why its process ended, as the log and the task's error say it."""
        return f"slot {self.device.index} process {death_reason(self.handle.exitcode)}"

    def end_process(self, timeout: float) -> None:
        """Close the process (asked to exit, killed after ``timeout``) and keep its load counts."""
        self.handle.close(timeout=timeout)
        self.loads += self.process_loads[0]
        self.load_seconds += self.process_loads[1]
        self.process_loads, self.handle = (0, 0.0), None


class Host:
    def __init__(self, env: SageMakerEnv, settings: ContainerConfig, devices: Sequence[SlotDevice],
                 launch: Callable[[SlotDevice, SharedStop], Any], stop_requested: Callable[[], bool]):
        self.env, self.settings = env, settings
        self.launch = launch  # (device, shared stop) -> a started slot: ProcessSlot in `train`
        self.stop_requested = stop_requested
        self.shared_stop = SharedStop()
        self.slots = [Slot(d) for d in devices]
        self.queue: deque = deque()
        self.outcomes: dict[str, TaskOutcome] = {}
        self.retried: dict[str, str] = {}  # task_id -> why its first process died
        self.stopping_since: float | None = None
        self.first_failure: TaskOutcome | None = None  # on_task_failure=fail
        self.fatal: str | None = None  # the base model cannot load
        self.window = [float("inf"), 0.0]  # first task start, last task end (time.time())

    # -- the loop ---------------------------------------------------------------------------

    def run(self, share: Sequence["TaskSpec"]) -> HostSummary:
        env = self.env
        self.share = list(share)
        self.summary = HostSummary(host=env.current_host, host_index=env.host_index, hosts=list(env.hosts),
                                   share=[t.task_id for t in share], slots=len(self.slots))
        self.queue = deque(share)
        start = time.monotonic()
        self._write_summary()
        try:
            while True:
                if self.stop_requested() and self.stopping_since is None:
                    self._begin_stop("stop requested")
                self._dispatch()
                if not any(s.task for s in self.slots):
                    if self._restartable():
                        continue  # a slot process ended just now: the next round starts a fresh one
                    break
                self._wait()
                self._enforce_stop_grace()
        finally:
            self._shutdown()
        self._left_over()
        if self.fatal:
            self.summary.state = "failed"
        elif self.first_failure is not None:
            self.summary.state = "failed"
        elif self.stopping_since is not None:
            self.summary.state = "interrupted"
        else:
            self.summary.state = "completed"
        self.summary.finished_at = now_iso()
        self.summary.seconds = round(time.monotonic() - start, 3)
        self._write_summary()
        if self.fatal:
            from container.worker import BaseModelError

            raise BaseModelError(self.fatal)
        return self.summary

    def _dispatch(self) -> None:
        """Every idle slot takes its retry or the next task of the queue."""
        if self.stopping_since is not None:
            return
        for slot in self.slots:
            if slot.task or slot.retired or not (slot.retry or self.queue):
                continue
            task, slot.retry = slot.retry or self.queue.popleft(), None
            if slot.handle is not None and not slot.handle.alive():  # died while idle
                self._process_ended(slot, f"{slot.death()} while idle")
                if slot.retired:
                    self.queue.appendleft(task)
                    continue
            if slot.handle is None:
                self._start(slot)
            try:
                slot.handle.conn.send(task)
            except OSError:  # it died just now, before the task reached it: the task never started
                self.queue.appendleft(task)
                self._process_ended(slot, slot.death())
                continue
            slot.task = task
            log.info("task %s -> slot %d (%d queued)", task.task_id, slot.device.index, len(self.queue))

    def _wait(self) -> None:
        """Wait for an outcome or a process ending, and handle what came."""
        busy = [s for s in self.slots if s.task]
        waitables: dict[Any, Slot] = {s.handle.conn: s for s in busy}
        waitables.update({s.handle.sentinel: s for s in busy if s.handle.sentinel is not None})
        seen: set[int] = set()
        for ready in wait(list(waitables), timeout=POLL_SECONDS):
            slot = waitables[ready]
            if slot.device.index in seen or slot.task is None:
                continue
            seen.add(slot.device.index)
            try:
                # A closed pipe is readable too: recv raises EOFError, or worse for half a message.
                message = slot.handle.conn.recv() if slot.handle.conn.poll() else None
            except Exception:
                message = None
            if message is None:
                self._died_under_task(slot)
            elif message[0] == "loaded":
                slot.process_loads = (message[1], message[2])
                self._write_summary()
            elif message[0] == "done":
                self._done(slot, *message[1:])
            else:  # "fatal": the base model does not load; no task of this host can run
                self.queue.appendleft(slot.task)  # never started: listed as not_started
                slot.task = None
                self.fatal = message[1]
                self._begin_stop(f"slot {slot.device.index}: {message[1]}")

    # -- events -----------------------------------------------------------------------------

    def _done(self, slot: Slot, outcome: TaskOutcome, report) -> None:
        task, slot.task = slot.task, None
        slot.process_loads = (report.base_model_loads, report.base_model_seconds)
        slot.busy_seconds += report.ended - report.started
        self.window = [min(self.window[0], report.started), max(self.window[1], report.ended)]
        if report.device_fault:  # the process ends itself: a fresh one on this slot, the task again once
            self._process_ended(slot, f"slot {slot.device.index}: {report.device_fault}")
            self._after_fault(slot, task, report.device_fault, outcome)
            return
        self._record(slot, outcome)

    def _died_under_task(self, slot: Slot) -> None:
        task, slot.task = slot.task, None
        slot.handle.join(5)  # the pipe closes a moment before the exit code is there
        reason = slot.death()
        self._process_ended(slot, f"{reason} while running task {task.task_id}")
        self._after_fault(slot, task, reason, None)

    def _after_fault(self, slot: Slot, task: "TaskSpec", reason: str, outcome: TaskOutcome | None) -> None:
        """A process fault under ``task``: run it again on a fresh process once, else record it."""
        checkpoint_dir = self.env.checkpoint_dir / task.task_id
        extra = task_status_extra(task, self.env.current_host, slot.device.index)
        if self.stopping_since is not None and outcome is None:
            # Stopping anyway: its last saved state is what a restart resumes from.
            write_abandoned_status(checkpoint_dir, f"interrupted: {reason}", extra=extra, state="interrupted")
            self._record(slot, TaskOutcome(task_id=task.task_id, outcome="interrupted", error=reason,
                                           slot=slot.device.index, user_id=task.user_id, finished_at=now_iso()))
            return
        if self.stopping_since is None and task.task_id not in self.retried:  # once
            self.retried[task.task_id] = reason
            log.warning("task %s: %s; running it again on a fresh slot process (from its last saved state)",
                        task.task_id, reason)
            if slot.retired:
                self.queue.appendleft(task)
            else:
                slot.retry = task
            return
        first = self.retried.get(task.task_id)
        if first == reason:
            error = f"{reason}, twice (run again once from its saved state, it died the same way)"
        else:
            error = reason if not first else f"{reason} (it had been run again after: {first})"
        if outcome is None:
            shutil.rmtree(self.env.model_dir / task.task_id, ignore_errors=True)  # nothing partial ships
            status = write_abandoned_status(checkpoint_dir, error, extra=extra)
            outcome = TaskOutcome(task_id=task.task_id, outcome="failed", step=int(status.get("step", 0) or 0),
                                  error=error, slot=slot.device.index, user_id=task.user_id, finished_at=now_iso())
        outcome.error = error  # a CUDA fault's outcome came from the slot: say it was the second time
        self._record(slot, outcome)

    def _record(self, slot: Slot, outcome: TaskOutcome) -> None:
        outcome.slot = slot.device.index
        outcome.retried_after = self.retried.get(outcome.task_id)
        self.outcomes[outcome.task_id] = outcome
        slot.tasks += 1
        log.info("task %s: %s on slot %d%s", outcome.task_id, outcome.outcome, slot.device.index,
                 f" ({outcome.error})" if outcome.error else "")
        if outcome.outcome == "interrupted" and self.stopping_since is None:
            self._begin_stop(f"task {outcome.task_id} was interrupted")
        if outcome.outcome == "failed" and self.settings.on_task_failure == "fail" and self.first_failure is None:
            self.first_failure = outcome
            self._begin_stop(f"task {outcome.task_id} failed (on_task_failure=fail)")
        self._write_summary()

    # -- slot processes ---------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        slot.handle = self.launch(slot.device, self.shared_stop)
        slot.pid, slot.starts = slot.handle.pid, slot.starts + 1
        log.info("slot %d started on %s (pid %s, %d CPU thread(s))%s", slot.device.index, slot.device.label,
                 slot.pid, slot.device.threads, f", start {slot.starts}" if slot.starts > 1 else "")
        self._write_summary()

    def _process_ended(self, slot: Slot, reason: str) -> None:
        """A slot's process ended by a fault: count it, retire the slot if it keeps faulting."""
        log.error("%s", reason)
        slot.end_process(timeout=10)
        slot.faults += 1
        if slot.faults >= MAX_SLOT_FAULTS:
            slot.retired = f"retired after {slot.faults} process faults; last: {reason}"
            log.error("slot %d %s; the other slots take its tasks", slot.device.index, slot.retired)
            if slot.retry is not None:
                self.queue.appendleft(slot.retry)
                slot.retry = None
        self._write_summary()

    def _begin_stop(self, why: str) -> None:
        self.stopping_since = time.monotonic()
        self.shared_stop.set()  # every slot's run_task saves state at its next step and returns
        running = [s.task.task_id for s in self.slots if s.task]
        log.warning("%s: stopping every slot%s", why, f" (saving {', '.join(running)})" if running else "")

    def _restartable(self) -> bool:
        """Work is left that a live or restartable slot can take (not after a stop)."""
        waiting = self.queue or any(s.retry for s in self.slots)
        return self.stopping_since is None and bool(waiting) and any(not s.retired for s in self.slots)

    def _enforce_stop_grace(self) -> None:
        if self.stopping_since is None or time.monotonic() - self.stopping_since < STOP_GRACE_SECONDS:
            return
        for slot in self.slots:
            if slot.task:
                log.error("slot %d did not stop within %.0f s: killing it", slot.device.index, STOP_GRACE_SECONDS)
                slot.handle.kill()

    def _shutdown(self) -> None:
        t0 = time.monotonic()
        for slot in self.slots:   # all asked first: they stop together, not one after another
            if slot.handle is not None:
                ask_exit(slot.handle.conn)
        for slot in self.slots:
            if slot.handle is not None:
                slot.end_process(timeout=30)
        log.info("slots stopped in %.1f s", time.monotonic() - t0)

    # -- summary ----------------------------------------------------------------------------

    def _left_over(self) -> None:
        """Tasks no slot ran: not_started after a stop; failed when every slot was retired."""
        left = list(self.queue) + [s.retry for s in self.slots if s.retry is not None]
        self.queue.clear()
        retired = [s.retired for s in self.slots if s.retired]
        for task in left:
            if self.stopping_since is not None or not retired:
                self.outcomes[task.task_id] = TaskOutcome(task_id=task.task_id, outcome="not_started", user_id=task.user_id)
                continue
            error = f"no slot left on {self.env.current_host} to run it: every slot was {retired[-1]}"
            write_failed_status(self.env.checkpoint_dir / task.task_id, error,
                                extra=task_status_extra(task, self.env.current_host))
            self.outcomes[task.task_id] = TaskOutcome(task_id=task.task_id, outcome="failed", error=error,
                                                      user_id=task.user_id, finished_at=now_iso())

    def _write_summary(self) -> None:
        s = self.summary
        s.tasks = [self.outcomes[t.task_id] for t in self.share if t.task_id in self.outcomes]
        s.slot_processes = [slot.to_dict() for slot in self.slots]
        s.base_model_loads = sum(d["base_model_loads"] for d in s.slot_processes)
        s.base_model_seconds = round(sum(d["base_model_seconds"] for d in s.slot_processes), 3)
        s.makespan_seconds = round(max(0.0, self.window[1] - self.window[0]), 3) if self.window[1] else 0.0
        s.write(self.env.output_data_dir)
