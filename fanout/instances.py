"""The SageMaker training instance types this project supports: GPUs, memory, price (stdlib only).

One table, read by `fanout plan` (K hosts x G GPU slots), `fanout submit` and the serverless
launcher (how many hosts a batch needs, whether its settings fit the GPU: `fanout.fit`) and
`fanout simulate` (price per instance-hour, GPUs per host, relative speed).

Sources, checked 2026-12 (docs/fanout.md#instance-types has the table with the same notes):
- GPUs per instance, vCPUs and host memory: AWS Batch user guide, "GPU jobs" (the EC2 GPU
  instance table: g5, g6, p4d, p5), cross-checked with torchx's named_resources_aws.py (g5,
  g6e, p4d, p4de, p5). SageMaker's ml.* types are these EC2 types.
- GPU memory: what the GPU reports to CUDA (`nvidia-smi --query-gpu=memory.total`), which is
  less than the marketing figure on the GDDR6 cards (ECC reserve): A10G 23028 MiB and L40S
  46068 MiB as public nvidia-smi listings show; L4 23034 MiB, A100 40960 / 81920 MiB, H100
  81559 MiB.
- Prices: SageMaker *training* on-demand, us-east-1, USD per instance-hour. AWS's pricing page
  is rendered by script and was not in the stored corpus, so every figure here is a
  **third-party** quote (the field notes of 2026-12, and public repositories' tables of 2026);
  types without a quote have ``None``: give your own (`--aws price_per_hour=`).
- Speed: training throughput of one GPU relative to an A10G. An **assumption** (no GPU was
  lent to this work), ordered by the data sheets' dense BF16 tensor throughput and memory
  bandwidth; `scripts/bench_train.py --arch ... --matrix` measures it on a lent GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from fanout.errors import InstanceError

FIELD_NOTES = "third-party figure quoted in the field notes (research/2026-12-field-notes.md), 2026-12"
REPO_TABLES = "third-party figure from public repositories' SageMaker price tables, 2026"


@dataclass(frozen=True)
class Gpu:
    model: str
    memory_mib: int        # what CUDA sees (nvidia-smi memory.total)
    nominal_gb: int        # the data sheet's figure
    speed: float           # training throughput relative to one A10G (assumption, see module doc)

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024.0


GPUS: dict[str, Gpu] = {
    "A10G": Gpu("A10G", 23028, 24, 1.0),
    "L4": Gpu("L4", 23034, 24, 0.8),            # A10G-class tensor peak, half its memory bandwidth
    "L40S": Gpu("L40S", 46068, 48, 2.0),
    "A100-40GB": Gpu("A100-40GB", 40960, 40, 2.5),
    "A100-80GB": Gpu("A100-80GB", 81920, 80, 2.5),
    "H100": Gpu("H100", 81559, 80, 4.5),
}


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    gpu: Gpu
    vcpus: int
    memory_gib: int                      # host memory
    price_per_hour: float | None = None  # on-demand SageMaker training, us-east-1, USD
    price_source: str = ""

    @property
    def gpu_memory_gib(self) -> float:
        """Memory of ONE GPU (a slot trains on one GPU; nothing here shards a model)."""
        return self.gpu.memory_gib

    def describe(self) -> str:
        return f"{self.name} ({self.gpus}x {self.gpu.model}, {self.gpu.memory_gib:.1f} GiB each)"


def _family(prefix: str, gpu: str, shapes: Mapping[str, tuple[int, int, int]],
            prices: Mapping[str, tuple[float, str]]) -> dict[str, InstanceType]:
    out = {}
    for size, (gpus, vcpus, memory) in shapes.items():
        name = f"ml.{prefix}.{size}"
        price, source = prices.get(size, (None, ""))
        out[name] = InstanceType(name, gpus, GPUS[gpu], vcpus, memory, price, source)
    return out


# (GPUs, vCPUs, host GiB) per size; g5 and g6 share their shapes.
_G5_SHAPES = {"xlarge": (1, 4, 16), "2xlarge": (1, 8, 32), "4xlarge": (1, 16, 64), "8xlarge": (1, 32, 128),
              "16xlarge": (1, 64, 256), "12xlarge": (4, 48, 192), "24xlarge": (4, 96, 384), "48xlarge": (8, 192, 768)}
_G6E_SHAPES = {"xlarge": (1, 4, 32), "2xlarge": (1, 8, 64), "4xlarge": (1, 16, 128), "8xlarge": (1, 32, 256),
               "16xlarge": (1, 64, 512), "12xlarge": (4, 48, 384), "24xlarge": (4, 96, 768), "48xlarge": (8, 192, 1536)}

INSTANCE_TYPES: dict[str, InstanceType] = {
    **_family("g5", "A10G", _G5_SHAPES, {
        "xlarge": (1.408, FIELD_NOTES), "4xlarge": (2.03, REPO_TABLES), "12xlarge": (7.09, FIELD_NOTES),
        "24xlarge": (10.18, REPO_TABLES), "48xlarge": (20.36, REPO_TABLES)}),
    **_family("g6", "L4", _G5_SHAPES, {"xlarge": (1.127, FIELD_NOTES)}),
    **_family("g6e", "L40S", _G6E_SHAPES, {"xlarge": (2.61, FIELD_NOTES), "12xlarge": (13.12, FIELD_NOTES)}),
    # the field notes quote p4d/p5 as ranges: the lower ends are EC2's on-demand prices, the upper SageMaker's
    "ml.p4d.24xlarge": InstanceType("ml.p4d.24xlarge", 8, GPUS["A100-40GB"], 96, 1152, 37.69, FIELD_NOTES),
    "ml.p4de.24xlarge": InstanceType("ml.p4de.24xlarge", 8, GPUS["A100-80GB"], 96, 1152),
    "ml.p5.48xlarge": InstanceType("ml.p5.48xlarge", 8, GPUS["H100"], 192, 2048, 113.14, FIELD_NOTES),
}


def instance_type(name: str, where: str = "instance type") -> InstanceType:
    """The table's entry for ``name``; InstanceError naming every known type otherwise."""
    found = INSTANCE_TYPES.get(name)
    if found is None:
        raise InstanceError(f"{where}: {name!r} is not a SageMaker training instance type this project supports; "
                            f"known: {', '.join(INSTANCE_TYPES)}")
    return found


def slots_per_host(instance: InstanceType, gpus_per_host: Any = None) -> int:
    """G: one slot per GPU of the type, or ``gpus_per_host`` (the job hyperparameter) when it is
    lower. Values as SageMaker sends them ("2", "\\"2\\"") are read; more slots than GPUs is an error."""
    if gpus_per_host is None or str(gpus_per_host).strip().strip('"').lower() in ("", "none", "null", "auto"):
        return instance.gpus                      # unset: every GPU (the container's reading too)
    value = _integer(gpus_per_host)
    if value is None or value < 1:
        raise InstanceError(f"gpus_per_host must be a whole number of at least 1, got {gpus_per_host!r}")
    if value > instance.gpus:
        raise InstanceError(f"gpus_per_host={value} but {instance.describe()} has {instance.gpus} GPU(s); "
                            f"set at most {instance.gpus} or pick a type with more GPUs")
    return value


def _integer(raw: Any) -> int | None:
    text = raw.strip().strip('"') if isinstance(raw, str) else raw
    if isinstance(text, bool):
        return None
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return int(number) if number == int(number) else None

