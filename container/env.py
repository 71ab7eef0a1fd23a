"""The SageMaker training contract as this container reads it: the /opt/ml tree.

SageMaker writes three config files before it starts the container:

    input/config/hyperparameters.json   every value a string (JSON-quoted by the Python SDK)
    input/config/resourceconfig.json    current_host, hosts, and on SageMaker also
                                        current_group_name, instance_groups, network_interface_name
    input/config/inputdataconfig.json   one entry per channel; the data is in input/data/<channel>/

The host topology is read through sagemaker-training's ``Environment`` so it means exactly what
it means for every other SageMaker container. Hyperparameters are read from the file as raw
strings on purpose: ``Environment`` JSON-decodes each value, which turns a prompt "123" into
the int 123 and a bare "1e-4" into a float; ``TrainConfig.from_dict`` converts by field type
instead, so it gets the strings.

Outside SageMaker the tree lives anywhere: ``SAGEMAKER_BASE_DIR`` points at it (sagemaker-
training reads that variable when its module is imported, so it is set before the import).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from container.errors import ContractError

BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"
DEFAULT_BASE_DIR = "/opt/ml"
# Names SageMaker and its SDK reserve for themselves (sagemaker_job_name, sagemaker_region,
# sagemaker_program, ...): never ours to validate.
RESERVED_PREFIX = "sagemaker_"
TASKS_FILE_NAMES = ("tasks.jsonl", "tasks.json")


@dataclass(frozen=True)
class SageMakerEnv:
    """What one host knows about the job it is part of."""

    base_dir: Path = field(metadata={"help": "root of the tree: /opt/ml, or SAGEMAKER_BASE_DIR"})
    current_host: str = field(metadata={"help": "this host's name, e.g. algo-2"})
    hosts: tuple[str, ...] = field(metadata={"help": "every host of the job, in SageMaker's order"})
    hyperparameters: Mapping[str, Any] = field(
        default_factory=dict,
        metadata={"help": "raw values from hyperparameters.json (strings), reserved names removed"},
    )
    channels: Mapping[str, Path] = field(
        default_factory=dict, metadata={"help": "channel name -> input/data/<channel>"}
    )
    input_modes: Mapping[str, str] = field(
        default_factory=dict, metadata={"help": "channel name -> TrainingInputMode (File, FastFile, Pipe)"}
    )
    current_group: str = field(default="homogeneousCluster", metadata={"help": "instance group of this host"})
    network_interface: str = field(default="eth0", metadata={"help": "network interface SageMaker exposes"})

    @property
    def host_index(self) -> int:
        """Position of this host in ``hosts``: the index the shard plan uses."""
        return self.hosts.index(self.current_host)

    @property
    def model_dir(self) -> Path:
        return self.base_dir / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.base_dir / "checkpoints"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def output_data_dir(self) -> Path:
        """This host's own folder of output data; SageMaker merges every host's output/data."""
        return self.output_dir / "data" / self.current_host

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    def channel(self, name: str) -> Path | None:
        """The folder of a channel, or None when the job has no such channel."""
        return self.channels.get(name)


def base_dir_from_environ() -> Path:
    return Path(os.environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR)


def read_env(base_dir: str | os.PathLike | None = None) -> SageMakerEnv:
    """Read the tree at ``base_dir`` (default: SAGEMAKER_BASE_DIR or /opt/ml)."""
    base = Path(base_dir) if base_dir is not None else base_dir_from_environ()
    config_dir = base / "input" / "config"
    hyperparameters = _read_json(config_dir / "hyperparameters.json", default={})
    resource_config = _read_json(config_dir / "resourceconfig.json", default=None)
    data_config = _read_json(config_dir / "inputdataconfig.json", default=None)
    data_dir = base / "input" / "data"
    if data_config is None:
        # A researcher's hand-made tree (docker run -v job:/opt/ml) may have only the folders.
        names = sorted(p.name for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []
        data_config = {name: {"TrainingInputMode": "File"} for name in names}
    if resource_config is None:
        resource_config = {"current_host": "algo-1", "hosts": ["algo-1"]}
    _check_resource_config(resource_config, config_dir / "resourceconfig.json")
    topology = _sagemaker_environment(base, resource_config, data_config)
    return SageMakerEnv(
        base_dir=base,
        current_host=topology["current_host"],
        hosts=tuple(topology["hosts"]),
        hyperparameters=job_hyperparameters(hyperparameters),
        channels={name: data_dir / name for name in sorted(data_config)},
        input_modes={name: str((cfg or {}).get("TrainingInputMode", "File")) for name, cfg in data_config.items()},
        current_group=topology["current_group"],
        network_interface=topology["network_interface"],
    )


def job_hyperparameters(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The job's own hyperparameters: raw values, SageMaker's reserved names dropped."""
    return {k: v for k, v in raw.items() if not k.startswith(RESERVED_PREFIX)}


def find_tasks_file(channel: Path) -> Path:
    """The one task-list file in the ``tasks`` channel (tasks.jsonl / tasks.json preferred)."""
    if not channel.is_dir():
        raise ContractError(f"channel 'tasks' has no folder at {channel}; pass the task list as channel 'tasks'")
    files = sorted(p for p in channel.rglob("*") if p.is_file() and not p.name.startswith("."))
    for name in TASKS_FILE_NAMES:
        named = [p for p in files if p.name == name]
        if len(named) == 1:
            return named[0]
    if len(files) == 1:
        return files[0]
    listed = ", ".join(str(p.relative_to(channel)) for p in files[:5]) or "no files"
    raise ContractError(
        f"channel 'tasks' must hold exactly one task-list file (or one named tasks.jsonl); found {listed}"
    )


def _read_json(path: Path, *, default: Any) -> Any:
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ContractError(f"{path} is not readable JSON: {exc}") from exc


def _check_resource_config(config: Any, path: Path) -> None:
    if not isinstance(config, dict):
        raise ContractError(f"{path}: expected a JSON object, got {type(config).__name__}")
    hosts = config.get("hosts")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise ContractError(f"{path}: 'hosts' must be a non-empty list of host names, got {hosts!r}")
    if len(set(hosts)) != len(hosts):
        raise ContractError(f"{path}: 'hosts' lists a host twice: {hosts}")
    if config.get("current_host") not in hosts:
        raise ContractError(f"{path}: current_host {config.get('current_host')!r} is not one of hosts {hosts}")


def _sagemaker_environment(base: Path, resource_config: dict, data_config: dict) -> dict:
    """Host topology through sagemaker-training's Environment.

    The module fixes its paths from SAGEMAKER_BASE_DIR when first imported (and points it at
    ~/sagemaker_local/... when neither the variable nor /opt/ml exists), so the variable is set
    first. Every input is passed in, so Environment reads no file of its own; the one
    hyperparameter given keeps it from falling back to reading hyperparameters.json.
    """
    os.environ.setdefault(BASE_DIR_ENV, str(base))
    from sagemaker_training import environment

    env = environment.Environment(
        resource_config=resource_config,
        input_data_config=data_config or {"_none": {}},
        hyperparameters={"sagemaker_container_log_level": 20},
    )
    return {
        "current_host": env.current_host,
        "hosts": list(env.hosts),
        "current_group": env.current_instance_group,
        "network_interface": env.network_interface_name,
    }
