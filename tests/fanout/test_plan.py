"""The shard plan: balanced, deterministic, honours explicit hosts; property-tested."""

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout.errors import PlanError
from fanout.plan import PlanConfig, plan_tasks, round_robin, split_backlog, task_cost
from fanout.tasks import TaskSpec


def task(tid, steps=None, host=None, prior=False, **hp):
    if steps is not None:
        hp["max_train_steps"] = steps
    return TaskSpec(tid, "img", "a photo", class_prompt="a dog" if prior else None, hyperparameters=hp, host=host)


def test_cost_model_follows_steps_resolution_prior_and_text_encoder():
    cfg = PlanConfig(task_overhead=0, preview_every=0)
    base = task_cost(task("a", 400), config=cfg)
    assert base == 400
    assert task_cost(task("a", 800), config=cfg) == 800
    assert task_cost(task("a", 400, resolution=1024), config=cfg) == 1600
    assert task_cost(task("a", 400, prior=True), config=cfg) == 800
    assert task_cost(task("a", 400, train_text_encoder="true"), config=cfg) > 400
    # SageMaker's JSON-quoted strings are read like plain values
    assert task_cost(task("a", '"800"'), config=cfg) == 800
    # job-level values apply unless the task overrides them
    assert task_cost(task("a"), {"max_train_steps": "200"}, cfg) == 200
    assert task_cost(task("a", 100), {"max_train_steps": "200"}, cfg) == 100
    assert task_cost(task("a", 400), config=PlanConfig(task_overhead=60, preview_every=100)) > 400


def test_plan_balances_a_mixed_list_better_than_round_robin():
    tasks = [task(f"t{i:02d}", 1600 if i % 4 == 0 else 200) for i in range(16)]
    plan, naive = plan_tasks(tasks, 4), round_robin(tasks, 4)
    assert plan.makespan < naive.makespan
    assert plan.makespan <= plan.lower_bound * 4 / 3
    assert 0 < plan.utilisation <= 1
    doc = json.loads(json.dumps(plan.to_dict()))
    assert set(doc) == {"hosts", "costs", "makespan", "lower_bound", "slots_per_host", "family"}
    assert [h["index"] for h in doc["hosts"]] == [0, 1, 2, 3]


def test_explicit_hosts_are_taken_as_given():
    tasks = [task("a", host=1), task("b", host=1), task("c", host=0)]
    plan = plan_tasks(tasks, 3)
    assert plan.share(0) == ("c",) and plan.share(1) == ("a", "b") and plan.share(2) == ()


def test_partial_or_out_of_range_hosts_are_errors():
    with pytest.raises(PlanError, match="set it on every task or on none"):
        plan_tasks([task("a", host=0), task("b")], 2)
    with pytest.raises(PlanError, match="valid hosts are 0..1"):
        plan_tasks([task("a", host=2)], 2)
    with pytest.raises(PlanError, match="positive integer"):
        plan_tasks([task("a")], 0)


def test_split_backlog_keeps_long_tasks_apart_from_short_ones():
    tasks = [task(f"long{i}", 4000) for i in range(3)] + [task(f"short{i}", 100) for i in range(9)]
    jobs = split_backlog(tasks, max_tasks_per_job=4)
    assert [[t.task_id for t in j] for j in jobs][0] == ["long0", "long1", "long2"]
    assert all(len(j) <= 4 for j in jobs)
    assert sorted(t.task_id for j in jobs for t in j) == sorted(t.task_id for t in tasks)


costs = st.lists(st.integers(min_value=1, max_value=5000), min_size=0, max_size=60)


@settings(max_examples=80, deadline=None)
@given(costs=costs, k=st.integers(min_value=1, max_value=12), seed=st.randoms())
def test_plan_properties(costs, k, seed):
    tasks = [task(f"t{i}", c) for i, c in enumerate(costs)]
    plan = plan_tasks(tasks, k)
    assigned = [tid for h in plan.hosts for tid in h.task_ids]
    assert sorted(assigned) == sorted(t.task_id for t in tasks)           # every task exactly once
    shuffled = list(tasks)
    seed.shuffle(shuffled)
    assert plan_tasks(shuffled, k) == plan                                 # input order does not matter
    top = max(plan.costs.values(), default=0)
    # never below the lower bound; never above Graham's list-scheduling bound
    assert plan.lower_bound - 1e-6 <= plan.makespan <= plan.total / k + (1 - 1 / k) * top + 1e-6
    assert len(plan.hosts) == k


@settings(max_examples=40, deadline=None)
@given(costs=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=7),
       k=st.integers(min_value=2, max_value=3))
def test_plan_is_within_lpt_bound_of_the_optimum(costs, k):
    tasks = [task(f"t{i}", c) for i, c in enumerate(costs)]
    plan = plan_tasks(tasks, k)
    values = list(plan.costs.values())
    best = min(max(sum(v for v, h in zip(values, hosts) if h == i) for i in range(k))
               for hosts in itertools.product(range(k), repeat=len(values)))
    assert plan.makespan <= best * (4 / 3 - 1 / (3 * k)) + 1e-6
