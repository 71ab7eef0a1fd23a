"""Container-level job hyperparameters: how the job runs, not how a LoRA trains.

They arrive in hyperparameters.json next to the training ones (SageMaker has one place for
both) and are split out before the training config is built, so TrainConfig never sees a
name it does not know. They are job-wide: a task's own ``hyperparameters`` cannot set them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from container.errors import JobConfigError
from fanout.redaction import shown

ON_TASK_FAILURE = ("continue", "fail")


@dataclass(frozen=True)
class ContainerConfig:
    on_task_failure: str = field(
        default="continue",
        metadata={
            "help": "continue: record a failed task's reason and run the next one (exit 0 when every "
            "task ended completed or failed with a reason); fail: stop the job at the first failed task"
        },
    )
    network_isolation: bool = field(
        default=False,
        metadata={
            "help": "the job runs with EnableNetworkIsolation: no output_uri uploads and no s3:// "
            "instance_data (the launcher sets it to match the job request)"
        },
    )
    gpus_per_host: int | None = field(
        default=None,
        metadata={
            "help": "slots per host: one warm worker process per GPU, each pinned to its own GPU. Default: "
            "every GPU the host sees (1 without a GPU); lower uses fewer GPUs; on a host without a GPU "
            "a number above 1 runs that many CPU slots (how the tests and the demo exercise it)"
        },
    )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "hyperparameters.json") -> "ContainerConfig":
        from train.hyperparameters import reject_unknown

        reject_unknown(values, {f.name for f in fields(cls)}, source=source, what="container setting",
                       error=JobConfigError)
        on_failure = _decode(values.get("on_task_failure", cls.on_task_failure), str, "on_task_failure", source)
        if on_failure not in ON_TASK_FAILURE:
            raise JobConfigError(
                f"{source}: on_task_failure={shown(on_failure)} is not one of {list(ON_TASK_FAILURE)}"
            )
        isolation = _decode(values.get("network_isolation", cls.network_isolation), bool, "network_isolation", source)
        return cls(on_task_failure=on_failure, network_isolation=isolation,
                   gpus_per_host=_slots(values.get("gpus_per_host"), source))


CONTAINER_HYPERPARAMETER_NAMES = frozenset(f.name for f in fields(ContainerConfig))


def _slots(value: Any, source: str) -> int | None:
    """gpus_per_host: unset (absent, null, "", "none", "auto") means every visible GPU."""
    if value is None or (isinstance(value, str) and value.strip().strip('"').lower() in ("", "none", "null", "auto")):
        return None
    count = _decode(value, int, "gpus_per_host", source)
    if count < 1:
        raise JobConfigError(f"{source}: gpus_per_host={value!r} must be at least 1 (or unset: every GPU the host sees)")
    return count


def _decode(value: Any, tp: type, name: str, source: str) -> Any:
    """SageMaker strings, bare or JSON-quoted, through train's one decoder."""
    from train.hyperparameters import decode

    try:
        return decode(value, tp)
    except (TypeError, ValueError) as exc:
        raise JobConfigError(f"{source}: {name}={shown(value)} is not valid ({exc})") from None
