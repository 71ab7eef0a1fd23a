"""`fanout simulate`: arguments -> Workload, TrainTimes, Aws, policies -> table, JSON, plots."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from fanout.simulate.inputs import Aws, SimulationError, TrainTimes, Workload, load_train_times, overridden
from fanout.simulate.policies import ONE_PER_REQUEST, PACKING, compare, instance_policies, search, settings_for, standard_policies
from fanout.simulate.report import plot, summary, table


def add_arguments(parser) -> None:
    parser.add_argument("--users", type=int, default=Workload.users, help="requests in the spike (default 10000)")
    parser.add_argument("--over", type=float, default=Workload.over_s, metavar="SECONDS",
                        help="seconds the requests arrive over (default 3600)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same figures)")
    parser.add_argument("--arrival", choices=("spike", "steady"), default="spike",
                        help="spike: uniform over --over; steady: Poisson at users/over")
    parser.add_argument("--trace", metavar="CSV", help="requests from a CSV: time_s, max_train_steps, resolution, prior, text_encoder")
    parser.add_argument("--train-times", metavar="FILE", help="JSON overriding the training-time table (TrainTimes fields)")
    parser.add_argument("--workload", action="append", default=[], metavar="KEY=VALUE",
                        help="a Workload field, e.g. steps_min=200 family=sdxl resolution=1024 (repeatable)")
    parser.add_argument("--aws", action="append", default=[], metavar="KEY=VALUE",
                        help="an Aws field, e.g. instance_quota=500 price_per_hour=1.2 (repeatable)")
    parser.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                        help="add a policy to the table: packing with these Policy fields, e.g. name=held "
                             "min_batch=32 max_wait_s=600 max_instances=4 schedule_period_s=300 (repeatable)")
    parser.add_argument("--warm-pool-seconds", type=float, default=600.0, help="keep-alive of the warm-pool policy")
    parser.add_argument("--instance-type", default=PACKING.instance_type, metavar="TYPE",
                        help="instance type of the standard policies (fanout.instances; a multi-GPU type runs one "
                             "slot per GPU)")
    parser.add_argument("--types", metavar="T1,T2,...",
                        help="also compare packing, on demand and on spot, on each of these types with the GPUs held "
                             "equal (the first type's quota and hosts per job in GPUs), e.g. ml.g5.xlarge,ml.g5.12xlarge")
    parser.add_argument("--json", metavar="FILE", help="write every policy's figures (and the search) as JSON")
    parser.add_argument("--plots", metavar="DIR", help="write ttm_cdf.png and instances.png (needs matplotlib)")
    parser.add_argument("--search", action="store_true",
                        help="sweep the launcher's knobs: cheapest policy with p95 no worse than one job per request")
    parser.add_argument("--p95-limit", type=float, metavar="SECONDS",
                        help="--search: the p95 time-to-model to stay under instead of one job per request's")


def inputs(args) -> tuple[Workload, TrainTimes, Aws]:
    workload = replace(Workload(), users=args.users, over_s=args.over, arrival=args.arrival)
    if args.trace:
        workload = replace(workload, arrival="trace", trace=args.trace)
    workload = overridden(workload, args.workload, "--workload")
    times = load_train_times(args.train_times) if args.train_times else TrainTimes()
    return workload, times, overridden(Aws(), args.aws, "--aws")


def run(args) -> int:
    workload, times, aws = inputs(args)
    started = time.perf_counter()
    policies = standard_policies(args.warm_pool_seconds, args.instance_type)
    if args.types:
        policies += instance_policies([t.strip() for t in args.types.split(",") if t.strip()], aws)
    if args.policy:
        custom = replace(PACKING, name="custom", instance_type=args.instance_type)
        policies.append(overridden(custom, args.policy, "--policy"))
    runs = compare(policies, workload, times, aws, args.seed)
    elapsed = time.perf_counter() - started
    rows = [summary(r) for r in runs]
    prices = ", ".join(sorted({f"{p.instance_type} ${p.price(aws)}/instance-hour" for p in policies}))
    print(f"{len(runs[0].requests)} requests ({workload.arrival}, {workload.family} at {workload.resolution} px), "
          f"quota {aws.instance_quota} instances unless a policy says; {prices}; simulated in {elapsed:.1f} s")
    print(table(rows))
    document = {"inputs": {"workload": asdict(workload), "train_times": asdict(times), "aws": asdict(aws),
                           "seed": args.seed}, "policies": rows, "simulation_seconds": round(elapsed, 2)}
    if args.search:
        started = time.perf_counter()
        found = search(workload, times, aws, args.seed, p95_limit_s=args.p95_limit,
                       baseline=replace(ONE_PER_REQUEST, instance_type=args.instance_type))
        document["search"] = {**found, "seconds": round(time.perf_counter() - started, 2)}
        print(f"\nsearch: {len(found['tried'])} policies in {document['search']['seconds']:.0f} s; "
              f"p95 limit ({'--p95-limit' if args.p95_limit else 'one job per request'}) {found['p95_limit_s'] / 3600:.2f} h")
        for label in ("best", "fastest"):
            if found[label]:
                print(f"{label}: {found[label]['name']}\n" + table([found[label]]).splitlines()[-1])
                print("  " + " ".join(f"{k}={v}" for k, v in settings_for(found[label]["policy"]).items()))
        if not found["best"]:
            print("no candidate met the p95 limit without failures")
    if args.json:
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(document, indent=2, default=str))
        except OSError as exc:
            raise SimulationError(f"--json {args.json}: cannot write ({exc})") from None
    if args.plots:
        for path in plot(runs, args.plots):
            print(f"wrote {path}")
    return 0
