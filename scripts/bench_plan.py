"""Planner benchmark: time to validate and plan 100,000 tasks, and plan quality on mixed lists.

    python scripts/bench_plan.py [--tasks 100000] [--instances 64] [--seed 0]

Quality is makespan / lower bound (1.00 = no host idles while another works; the lower bound
is max(total / K, largest task)), for LPT (what fanout plans) against round-robin (task i on
host i mod K, the naive split).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fanout.plan import plan_tasks, round_robin, split_backlog
from fanout.tasks import parse_tasks


def mixed_tasks_text(count: int, rng: random.Random) -> str:
    """A realistic mix: steps 200-1600, 512-1024 px, half with prior preservation, some TE."""
    lines = []
    for i in range(count):
        hp = {"max_train_steps": rng.choice([200, 400, 400, 800, 1600]), "resolution": rng.choice([512, 512, 768, 1024])}
        if rng.random() < 0.2:
            hp["train_text_encoder"] = True
        task = {"task_id": f"user{i:06d}", "instance_data": f"user{i:06d}", "instance_prompt": "a photo of sks person",
                "hyperparameters": hp}
        if rng.random() < 0.5:
            task["class_prompt"] = "a photo of a person"
        lines.append(json.dumps(task))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    text = mixed_tasks_text(args.tasks, rng)
    t0 = time.perf_counter()
    tasks = parse_tasks(text, "bench")
    t1 = time.perf_counter()
    plan = plan_tasks(tasks, args.instances)
    t2 = time.perf_counter()
    print(f"{args.tasks} tasks: validate {t1 - t0:.2f} s, plan on {args.instances} hosts {t2 - t1:.2f} s; "
          f"makespan/lower bound {plan.makespan / plan.lower_bound:.4f}")

    print(f"\n{'K':>4} {'tasks':>6}  {'LPT ms/lb':>9}  {'round-robin ms/lb':>17}  {'LPT util':>8}  {'RR util':>7}")
    for k, per_host in ((4, 3), (8, 4), (16, 4), (64, 8)):
        subset = tasks[: k * per_host]
        lpt, rr = plan_tasks(subset, k), round_robin(subset, k)
        print(f"{k:>4} {len(subset):>6}  {lpt.makespan / lpt.lower_bound:>9.3f}  {rr.makespan / rr.lower_bound:>17.3f}"
              f"  {lpt.utilisation:>8.1%}  {rr.utilisation:>7.1%}")

    backlog, k, size = tasks[:512], 8, 16
    busy = sum(plan_tasks(backlog, 1).costs.values())
    arrival = [backlog[i:i + size] for i in range(0, len(backlog), size)]
    similar = split_backlog(backlog, size)
    print()
    for label, jobs in (("in arrival order", arrival), ("by similar cost (split_backlog)", similar)):
        billed = sum(plan_tasks(list(j), k).makespan * k for j in jobs)
        print(f"backlog of {len(backlog)} tasks as {len(jobs)} jobs of <= {size} on K={k}, {label}: "
              f"utilisation {busy / billed:.1%} (billed host-time {billed / busy:.2f}x busy)")


if __name__ == "__main__":
    main()
