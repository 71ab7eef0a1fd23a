"""What a job cost: instances x billed seconds x the instance type's price per hour.

Prices come from the instance table the planner and the simulator use (``fanout.instances``:
on demand, us-east-1, each with its source and date); a price the table does not hold is given
with ``--price-per-hour`` or the cost is left out, saying so. A job run by ``fanout local`` has no instance type: it is
priced as the instance type a submitted job gets by default, and the page says "as if".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    instance_type: str
    per_hour: float
    source: str


def price_table() -> dict[str, Price]:
    from fanout.instances import INSTANCE_TYPES

    return {name: Price(name, t.price_per_hour, t.price_source) for name, t in INSTANCE_TYPES.items()
            if t.price_per_hour is not None}


def default_instance_type() -> str:
    from fanout.request import LaunchConfig

    return LaunchConfig.instance_type


def price_for(instance_type: str, override: float | None = None) -> Price | None:
    if override is not None:
        return Price(instance_type, float(override), "given with --price-per-hour")
    return price_table().get(instance_type)


@dataclass(frozen=True)
class JobCost:
    price: Price
    instances: int
    billed_seconds: float          # per instance
    delivered: int                 # LoRAs the job delivered (completed or restored tasks)
    idle_seconds: float            # host-seconds billed while no task ran
    basis: str                     # how billed_seconds was found

    @property
    def total(self) -> float:
        return self.instances * self.billed_seconds / 3600.0 * self.price.per_hour

    @property
    def per_lora(self) -> float | None:
        return self.total / self.delivered if self.delivered else None

    @property
    def idle(self) -> float:
        return self.idle_seconds / 3600.0 * self.price.per_hour

    def of_seconds(self, seconds: float) -> float:
        return seconds / 3600.0 * self.price.per_hour
