"""`fanout simulate`: what a spike of users costs and how long they wait, under each launch policy.

Python API::

    from fanout.simulate import Workload, Aws, TrainTimes, Policy, simulate, summary, compare, standard_policies
    run = simulate(Workload(users=500, over_s=600), policy=Policy(max_instances=4))
    print(summary(run)["cost_per_lora"])
"""

from fanout.simulate.engine import Run, Simulation, simulate
from fanout.simulate.inputs import Aws, Policy, SimulationError, TrainTimes, Workload, arrivals
from fanout.simulate.policies import (ONE_PER_REQUEST, PACKING, SearchSpace, compare, instance_policies, search,
                                      standard_policies)
from fanout.simulate.report import plot, summary, table

__all__ = ["Aws", "ONE_PER_REQUEST", "PACKING", "Policy", "Run", "SearchSpace", "Simulation", "SimulationError",
           "TrainTimes", "Workload", "arrivals", "compare", "instance_policies", "plot", "search", "simulate",
           "standard_policies", "summary", "table"]
