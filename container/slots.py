"""Slot processes: one warm worker per GPU, each in its own process, and what they say to the host.

The host (``container.host``) starts one process per slot with multiprocessing's *spawn*
context: a fresh interpreter, so CUDA is initialised only inside the slot, after the slot has
pinned itself to its GPU (``CUDA_VISIBLE_DEVICES``) and its share of CPU threads. A CUDA
error, an out-of-memory kill or a segfault ends that process only; the host sees its pipe
close and decides (``container.faults``). The host never imports torch.

    host -> slot   a TaskSpec to run, or None: exit
    slot -> host   ("loaded", loads, seconds) as soon as the base model is loaded
                   ("done", TaskOutcome, SlotReport) after each task
                   ("fatal", reason) when the base model cannot load (no task can run)

A slot asks for nothing: the host sends a task only to an idle slot, so the queue stays on
the host, in plan order, and a slow task on one GPU holds up no other task. Stop requests
reach every slot through one shared byte (``SharedStop``), polled between training steps.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from container.devices import SlotDevice
from container.env import SageMakerEnv
from container.settings import ContainerConfig

if TYPE_CHECKING:
    from container.worker import Worker
    from train.api import Trainer

log = logging.getLogger("container.slots")


@dataclass(frozen=True)
class SlotSpec:
    """Everything a slot needs to build its worker; picklable (spawn sends it to the process)."""

    env: SageMakerEnv
    settings: ContainerConfig
    job_hp: Mapping[str, Any]
    trainer: "Trainer"
    mixed_precision: str = "no"
    rejected: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"

    def worker(self, slot: int, stop_requested: Callable[[], bool]) -> "Worker":
        from container.worker import Worker

        return Worker(env=self.env, settings=self.settings, job_hp=self.job_hp, trainer=self.trainer,
                      stop_requested=stop_requested, mixed_precision=self.mixed_precision,
                      rejected=dict(self.rejected), slot=slot)


@dataclass(frozen=True)
class SlotReport:
    """Sent with every outcome: the slot's load counters and when the task's own work ran."""

    base_model_loads: int
    base_model_seconds: float
    started: float  # time.time() once the base model was loaded: the task's own work began
    ended: float
    device_fault: str | None = None  # set: this process ends now, the host starts a fresh one


class SharedStop:
    """The host's stop request, read by every slot: one shared byte, no lock.

    A lock (multiprocessing.Event has one) could be left held by a slot killed while reading
    it, and every other slot would hang on its next poll.
    """

    def __init__(self) -> None:
        self._value = multiprocessing.get_context("spawn").RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def __call__(self) -> bool:
        return bool(self._value.value)


class ProcessSlot:
    """The host's end of one slot process."""

    def __init__(self, device: SlotDevice, stop: SharedStop, *, spec: SlotSpec):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # Not a daemon: a daemon process may not start children of its own (data loaders may).
        self.process = ctx.Process(target=slot_main, args=(child, spec, device, stop), name=f"slot-{device.index}")
        self.process.start()
        child.close()  # the slot holds the only other end: its death closes the pipe

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def sentinel(self) -> int | None:
        return self.process.sentinel

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        self.process.kill()

    def join(self, timeout: float) -> None:
        self.process.join(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Ask the slot to exit (it does once its current task ended), wait, then kill it."""
        ask_exit(self.conn)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        self.conn.close()


def ask_exit(conn) -> None:
    """Tell a slot to exit once its current task ended (None on its pipe); a gone one is fine."""
    try:
        conn.send(None)
    except OSError:
        pass


class ThreadSlot:
    """A slot as a thread of this process, around a ready-made worker: no isolation at all.
    The orchestration tests drive the host's loop this way, with a stand-in trainer."""

    def __init__(self, worker: "Worker"):
        self.conn, child = multiprocessing.Pipe()
        self.thread = threading.Thread(target=serve, args=(child, worker), name=f"slot-{worker.slot}", daemon=True)
        self.thread.start()

    pid = property(lambda self: os.getpid())
    sentinel = None
    exitcode = property(lambda self: None if self.thread.is_alive() else 0)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def kill(self) -> None:
        pass  # a thread cannot be killed; the stop request ends its task

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def close(self, timeout: float = 30.0) -> None:
        ask_exit(self.conn)
        self.thread.join(timeout)
        self.conn.close()


# -- inside the slot process ------------------------------------------------------------------

def slot_main(conn, spec: SlotSpec, device: SlotDevice, stop: SharedStop) -> None:
    """The slot process: pin the device, build the worker, serve the host until told to exit."""
    # Before torch is imported: CUDA reads CUDA_VISIBLE_DEVICES and OpenMP its thread count once.
    early_torch = "torch" in sys.modules
    os.environ.update(device.environ())
    from container.entry import configure_logging
    from container.signals import StopFlag

    configure_logging(spec.log_level, tag=f"slot {device.index}")
    if early_torch:
        log.warning("torch was imported before slot %d was pinned to its device", device.index)
    # SIGTERM/SIGINT sent to the whole process group (Ctrl-C) reach the slot too: same meaning.
    own = StopFlag().install()
    host_pid = os.getppid()

    def stop_requested() -> bool:
        # A host that died without a word (SIGKILL) leaves the slot orphaned: stop and save state.
        return stop() or own() or os.getppid() != host_pid

    worker = spec.worker(device.index, stop_requested)
    log.info("slot %d: %s, %d CPU thread(s), pid %d", device.index, device.label, device.threads, os.getpid())
    code = 0
    try:
        serve(conn, worker)
    except BaseException:  # a bug, not a task's failure (serve records those): the host sees the exit code
        log.exception("slot %d stopped on an internal error", device.index)
        code = 1
    # Everything is written and closed (atomically); skip the interpreter's teardown of torch and
    # friends, which takes seconds a stopping host does not have.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(conn, worker: "Worker") -> None:
    """Run each task the host sends and answer with its outcome, until None or the host is gone."""
    from container.worker import BaseModelError

    def tell(*message) -> bool:
        try:
            conn.send(message)
            return True
        except OSError:  # the host is gone (killed outright): nobody left to tell
            return False

    worker.on_base_loaded = lambda: tell("loaded", worker.base_model_loads, worker.base_model_seconds)
    try:
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError):
                return
            if task is None:
                return
            began, loaded_before = time.time(), worker.base_model_seconds
            try:
                outcome = worker.run_one(task)
            except BaseModelError as exc:
                tell("fatal", str(exc))
                return
            ended = time.time()
            started = min(ended, began + worker.base_model_seconds - loaded_before)
            report = SlotReport(worker.base_model_loads, worker.base_model_seconds, started, ended, worker.device_fault)
            if not tell("done", outcome, report) or worker.device_fault:
                return  # after a CUDA fault every further CUDA call here would fail: the host starts a new process
    finally:
        conn.close()
