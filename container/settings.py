"""Container-level job hyperparameters: how the job runs, not how a LoRA trains.

They arrive in hyperparameters.json next to the training ones (SageMaker has one place for
both) and are split out before the training config is built, so TrainConfig never sees a
name it does not know. They are job-wide: a task's own ``hyperparameters`` cannot set them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from container.errors import JobConfigError

ON_TASK_FAILURE = ("continue", "fail")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


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

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "hyperparameters.json") -> "ContainerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise JobConfigError(f"{source}: unknown container setting(s) {unknown}; valid: {sorted(known)}")
        on_failure = _decode(values.get("on_task_failure", cls.on_task_failure))
        if on_failure not in ON_TASK_FAILURE:
            raise JobConfigError(
                f"{source}: on_task_failure={on_failure!r} is not one of {list(ON_TASK_FAILURE)}"
            )
        isolation = _to_bool(values.get("network_isolation", cls.network_isolation), "network_isolation", source)
        return cls(on_task_failure=on_failure, network_isolation=isolation)


CONTAINER_HYPERPARAMETER_NAMES = frozenset(f.name for f in fields(ContainerConfig))


def _decode(value: Any) -> Any:
    """SageMaker strings: the SDK JSON-quotes them ("\\"fail\\""), the raw API does not ("fail")."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, (str, bool)) else value
    return value


def _to_bool(value: Any, name: str, source: str) -> bool:
    value = _decode(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise JobConfigError(f"{source}: {name}={value!r} is not a boolean (true or false)")
