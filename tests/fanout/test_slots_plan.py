"""The plan over K hosts x G GPU slots, costs by family, and `fanout simulate` on multi-GPU types."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from fanout.cli import main
from fanout.families import FAMILIES, UNIT_S
from fanout.plan import PlanConfig, instances_for, launch_batches, plan_tasks, task_cost
from fanout.simulate import PACKING, Aws, SimulationError, Workload, simulate, summary
from fanout.simulate.policies import instance_policies
from fanout.tasks import TaskSpec


def task(task_id: str, steps: int, **hp) -> TaskSpec:
    return TaskSpec(task_id, task_id, "a photo of sks dog", hyperparameters={"max_train_steps": steps, **hp})


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(st.integers(min_value=1, max_value=3000), max_size=40), k=st.integers(1, 6),
       g=st.integers(1, 8), seed=st.randoms(), family=st.sampled_from(sorted(FAMILIES)))
def test_slot_plan_properties(steps, k, g, seed, family):
    tasks = [task(f"t{i}", n) for i, n in enumerate(steps)]
    plan = plan_tasks(tasks, k, slots_per_host=g, family=family)
    in_slots = [t for h in plan.hosts for slot in h.slots for t in slot]
    assert sorted(in_slots) == sorted(t.task_id for t in tasks)                        # every task exactly once
    assert all(sorted(h.task_ids) == sorted(t for s in h.slots for t in s) for h in plan.hosts)
    assert all(len(h.slots) == g for h in plan.hosts) and len(plan.hosts) == k
    shuffled = list(tasks)
    seed.shuffle(shuffled)
    assert plan_tasks(shuffled, k, slots_per_host=g, family=family) == plan           # deterministic
    for h in plan.hosts:                                                                # makespan per host
        assert h.makespan == pytest.approx(max(plan.slot_loads(h.index)), abs=1e-3)
        assert list(h.task_ids) == sorted(h.task_ids, key=lambda t: (-plan.costs[t], t))   # the queue's order
    assert plan.makespan == max((h.makespan for h in plan.hosts), default=0.0)
    lanes, top = k * g, max(plan.costs.values(), default=0.0)
    assert plan.lower_bound - 1e-3 <= plan.makespan <= plan.total / lanes + (1 - 1 / lanes) * top + 1e-3


def test_two_gpus_per_host_halve_the_makespan_of_even_tasks_and_pinned_hosts_stay():
    tasks = [task(f"t{i}", 400) for i in range(8)]
    one, two = plan_tasks(tasks, 2), plan_tasks(tasks, 2, slots_per_host=2)
    assert two.makespan == pytest.approx(one.makespan / 2, rel=1e-6) and two.utilisation == pytest.approx(1.0)
    pinned = [replace(t, host=i % 2) for i, t in enumerate(tasks)]
    plan = plan_tasks(pinned, 2, slots_per_host=2)
    assert [sorted(h.task_ids) for h in plan.hosts] == [["t0", "t2", "t4", "t6"], ["t1", "t3", "t5", "t7"]]
    assert [len(s) for h in plan.hosts for s in h.slots] == [2, 2, 2, 2]


def test_a_task_costs_what_its_family_step_costs():
    config = PlanConfig(task_overhead=0)
    plain = dict(resolution=1024, preview_every=0, gradient_accumulation_steps=1)   # what recipes would set otherwise
    sd = task_cost(task("a", 400, **plain), config=config, family="sd")
    for name, spec in FAMILIES.items():
        cost = task_cost(task("a", 400, **plain), config=config, family=name)
        assert cost == pytest.approx(400 * spec.step_seconds(1024) / UNIT_S, rel=1e-3)
    assert task_cost(task("a", 400, **plain), config=config, family="flux") > 2 * sd
    # accumulation multiplies the micro-steps; the family's own overhead applies when the config leaves it
    assert task_cost(task("a", 400, gradient_accumulation_steps=4, preview_every=0), config=config) == pytest.approx(1600)
    assert task_cost(task("a", 0, preview_every=0), family="qwen-image") == pytest.approx(
        FAMILIES["qwen-image"].task_fixed_s / UNIT_S, abs=1e-3)


def test_the_launcher_sizes_jobs_in_gpu_slots():
    assert [instances_for(n, 8, 4) for n in (1, 4, 5, 10, 64)] == [1, 1, 2, 3, 8]
    batches = launch_batches([task(f"t{i}", 400) for i in range(10)], 64, 8, slots_per_host=4, family="flux")
    assert [(len(b), k) for b, k in batches] == [(10, 3)]


def test_plan_cli_shows_each_host_and_its_slots(tmp_path, capsys):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"task_id": f"t{i}", "instance_data": "x", "instance_prompt": "p",
                                        "hyperparameters": {"max_train_steps": 200 * (i + 1)}}) + "\n" for i in range(6)))
    assert main(["plan", str(path), "-k", "1", "--instance-type", "ml.g5.12xlarge", "--family", "sd"]) == 0
    out = capsys.readouterr().out
    assert "slot 3:" in out and "1 host(s) x 4 GPU slot(s) of ml.g5.12xlarge; family sd" in out
    assert main(["plan", str(path), "-k", "1", "--instance-type", "ml.g5.12xlarge", "--hp", "gpus_per_host=2",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["slots_per_host"] == 2 and len(doc["hosts"][0]["slots"]) == 2
    assert doc["hosts"][0]["makespan"] < doc["hosts"][0]["cost"]
    assert main(["plan", str(path), "-k", "1", "--instance-type", "ml.g5.xlarge", "--hp", "gpus_per_host=2"]) == 2
    assert "gpus_per_host=2 but ml.g5.xlarge" in capsys.readouterr().err


SMALL = Workload(users=80, over_s=300)


def test_simulate_compares_single_and_multi_gpu_types_on_demand_and_spot():
    aws = Aws(instance_quota=16)
    runs = {p.name: simulate(SMALL, aws=aws, policy=p) for p in instance_policies(["ml.g5.xlarge", "ml.g5.12xlarge"], aws)}
    rows = {name: summary(run) for name, run in runs.items()}
    multi = next(name for name in rows if name.startswith("packing, ml.g5.12xlarge"))
    assert "K<=2 x 4 GPUs, quota 4" in multi
    assert all(r["completed"] == SMALL.users and r["time_to_model"]["p95"] for r in rows.values())
    run = runs[multi]
    assert {j.slots for j in run.jobs} == {4} and all(len(j.hosts) == 4 * j.k for j in run.jobs)
    assert rows[multi]["cost"] == pytest.approx(rows[multi]["instance_hours"] * 7.09, rel=0.01)   # the table's price
    assert rows[multi]["peak_instances"] <= 4
    spot = rows[multi.replace("packing,", "packing + spot,")]
    assert spot["cost_per_lora"] < rows[multi]["cost_per_lora"]
    single = rows[next(name for name in rows if name.startswith("packing, ml.g5.xlarge"))]
    # four A10Gs as one instance cost what the table says: more per GPU-hour than four single ones
    assert rows[multi]["cost_per_lora"] > single["cost_per_lora"]


def test_simulate_cli_runs_on_a_multi_gpu_type_and_needs_a_price(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main(["simulate", "--users", "40", "--over", "120", "--instance-type", "ml.g6e.12xlarge",
                 "--aws", "instance_quota=8", "--json", str(out)]) == 0
    policies = json.loads(out.read_text())["policies"]
    assert {p["instance_type"] for p in policies} == {"ml.g6e.12xlarge"}
    assert {p["slots_per_host"] for p in policies} == {4}
    with pytest.raises(SimulationError, match="no price is quoted for ml.g6e.2xlarge"):
        simulate(SMALL, policy=replace(PACKING, instance_type="ml.g6e.2xlarge"))
    assert math.isfinite(summary(simulate(SMALL, aws=Aws(price_per_hour=2.0),
                                          policy=replace(PACKING, instance_type="ml.g6e.2xlarge")))["cost"])
