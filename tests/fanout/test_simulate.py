"""`fanout simulate`: the event-heap simulation of launch policies (pure; no AWS, no matplotlib
unless plots are asked for)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import fanout.plan
from fanout.cli import main
from fanout.simulate.engine import hold_for_batch
from fanout.simulate.inputs import load_train_times
from fanout.simulate import (ONE_PER_REQUEST, PACKING, Aws, Policy, SearchSpace, SimulationError, TrainTimes,
                             Workload, arrivals, search, simulate, summary)

ROOT = Path(__file__).resolve().parents[2]
SMALL = Workload(users=120, over_s=600)
ROOMY = Aws(instance_quota=400)


def test_a_seed_fixes_every_figure_and_another_seed_changes_them():
    spot = replace(PACKING, spot=True)
    aws = replace(ROOMY, interruptions_per_hour=2.0, task_failure_rate=0.1)
    first, again = summary(simulate(SMALL, aws=aws, policy=spot, seed=7)), summary(simulate(SMALL, aws=aws, policy=spot, seed=7))
    other = summary(simulate(SMALL, aws=aws, policy=spot, seed=8))
    assert first == again
    assert other["time_to_model"] != first["time_to_model"]


def test_every_request_ends_once_as_a_model_or_a_failure():
    """Task failures with retries, spot interruptions, a tight quota (refusals) and throttles."""
    aws = Aws(instance_quota=16, interruptions_per_hour=3.0, task_failure_rate=0.3, max_retries=1)
    for policy in (replace(PACKING, spot=True, max_instances=4, max_tasks_per_job=8),
                   replace(ONE_PER_REQUEST, on_arrival=True)):
        run = simulate(SMALL, aws=aws, policy=policy, seed=3)
        assert all(r.endings == 1 for r in run.requests)
        assert all((r.done is None) != (r.failed is None) for r in run.requests)
        done = [r for r in run.requests if r.done is not None]
        assert done and all(r.done > r.arrival for r in done)
        failed = [r for r in run.requests if r.failed]
        assert failed and all(r.failed == "task failed 2 times" for r in failed)
        s = summary(run)
        assert s["completed"] + s["failed"] == SMALL.users
    assert s["throttles"] > 0                   # the stream-triggered launcher met the API cap


def test_with_no_start_time_one_host_trains_the_tasks_back_to_back(tmp_path):
    trace = tmp_path / "trace.csv"
    # costs within split_backlog's 3x of each other: one job
    trace.write_text("time_s,max_train_steps,resolution,prior\n0,400,512,0\n0,600,512,1\n0,500,768,0\n0,900,512,0\n")
    workload = Workload(arrival="trace", trace=str(trace))
    aws = Aws(instance_quota=1, cold_provision_s=0, cold_start_s=0, job_end_s=0, delivery_s=0)
    times = TrainTimes(load_s=0)
    run = simulate(workload, times, aws, Policy(max_instances=1, max_tasks_per_job=10, max_jobs_per_run=1))
    total = sum(times.task_seconds(task, "sd") for _, task in arrivals(workload, 0))
    assert len(run.jobs) == 1
    assert max(r.done for r in run.requests) == pytest.approx(total)
    assert summary(run)["train_share"] == pytest.approx(1.0)


def test_one_job_per_request_never_calls_above_the_api_rate():
    run = simulate(Workload(users=300, over_s=60), aws=ROOMY, policy=ONE_PER_REQUEST)
    s = summary(run)
    assert s["jobs_created"] == 300 and s["completed"] == 300
    assert s["max_calls_per_second"] <= ROOMY.api_tps and s["throttles"] == 0
    # the same launcher run on every arrival (concurrent Lambdas) does go over and is throttled
    stream = summary(simulate(Workload(users=300, over_s=60), aws=ROOMY, policy=replace(ONE_PER_REQUEST, on_arrival=True)))
    assert stream["max_calls_per_second"] > ROOMY.api_tps and stream["throttles"] > 0


def test_a_spot_interruption_loses_at_most_the_work_since_the_last_checkpoint():
    aws = replace(ROOMY, interruptions_per_hour=4.0)
    run = simulate(SMALL, aws=aws, policy=replace(PACKING, spot=True))
    assert run.interrupt_events > 0 and run.interruptions
    longest_gap = max(r.checkpoint_s for r in run.requests)
    assert all(0 <= lost <= longest_gap + 1e-6 for lost in run.interruptions)
    # work is conserved: host time in tasks = the tasks' own time + exactly what was lost
    busy = sum(j.busy_s for j in run.jobs)
    assert busy == pytest.approx(sum(r.seconds for r in run.requests) + sum(run.interruptions))
    # resume states only at the end of a task: an interruption loses more
    coarse = simulate(SMALL, TrainTimes(checkpoint_every=0), aws, replace(PACKING, spot=True))
    assert sum(coarse.interruptions) / len(coarse.interruptions) > sum(run.interruptions) / len(run.interruptions)


def test_the_simulation_runs_the_real_planner(monkeypatch):
    workload = Workload(users=64, over_s=1, steps_min=100, steps_max=1600)
    policy = Policy(max_instances=8, max_tasks_per_job=64)
    lpt = summary(simulate(workload, aws=ROOMY, policy=policy))
    monkeypatch.setattr(fanout.plan, "plan_tasks", fanout.plan.round_robin)
    naive = summary(simulate(workload, aws=ROOMY, policy=policy))
    assert naive["instance_hours"] > lpt["instance_hours"] and naive["train_share"] < lpt["train_share"]
    monkeypatch.setattr(fanout.plan, "split_backlog", lambda tasks, *a, **k: [(t,) for t in tasks])
    assert summary(simulate(workload, aws=ROOMY, policy=policy))["jobs_created"] == 64


def test_holding_for_a_batch_trades_waiting_for_fewer_jobs():
    steady = Workload(arrival="steady", users=120, over_s=3600)
    eager = summary(simulate(steady, aws=ROOMY, policy=PACKING))
    held = summary(simulate(steady, aws=ROOMY, policy=replace(PACKING, min_batch=20, max_wait_s=900)))
    assert held["jobs_created"] < eager["jobs_created"]
    assert held["time_to_model"]["p50"] > eager["time_to_model"]["p50"]
    assert hold_for_batch(3, 10, 4, 60) and not hold_for_batch(3, 60, 4, 60)
    assert not hold_for_batch(4, 0, 4, 60) and not hold_for_batch(0, 0, 4, 60)


def test_search_finds_the_cheapest_policy_no_slower_than_one_job_per_request():
    space = SearchSpace(max_instances=(2, 8), max_tasks_per_job=(16, 64), max_jobs_per_run=(4,))
    found = search(Workload(users=400, over_s=300), aws=Aws(instance_quota=40), space=space)
    best = found["best"]
    assert best is not None and best["time_to_model"]["p95"] <= found["p95_limit_s"]
    assert best["cost_per_lora"] < found["baseline"]["cost_per_lora"]
    fit = [s for s in found["tried"] + [found["baseline"]] if s["failed"] == 0 and s["time_to_model"]["p95"] <= found["p95_limit_s"]]
    assert best["cost_per_lora"] == min(s["cost_per_lora"] for s in fit)


def test_bad_inputs_name_the_file_line_or_field(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("time_s,max_train_steps\n0,400\nsoon,400\n")
    with pytest.raises(SimulationError, match=r"t\.csv:3: needs time_s"):
        arrivals(Workload(arrival="trace", trace=str(trace)), 0)
    with pytest.raises(SimulationError, match="exceeds the instance quota"):
        simulate(SMALL, aws=Aws(instance_quota=4), policy=PACKING)
    with pytest.raises(SimulationError, match="no training time for family 'sd3'"):
        simulate(replace(SMALL, family="sd3"))
    times = tmp_path / "times.json"
    times.write_text('{"step_s": {"sd15": {"fast": 0.2}}}')
    with pytest.raises(SimulationError, match=r"times\.json: step_s\['sd15'\] must map resolutions"):
        simulate(SMALL, load_train_times(str(times)))
    assert main(["simulate", "--users", "10", "--aws", "quota=5"]) == 2
    assert main(["simulate", "--users", "10", "--aws", "spot_discount=1.5"]) == 2
    assert main(["simulate", "--users", "10", "--policy", "spot=maybe"]) == 2


def test_cli_writes_json_and_plots_and_imports_matplotlib_only_for_plots(tmp_path):
    code = ("import sys, json; from fanout.cli import main\n"
            f"assert main(['simulate', '--users', '150', '--over', '300', '--json', {str(tmp_path / 'a.json')!r}]) == 0\n"
            "print(json.dumps(sorted(m for m in ('matplotlib', 'torch', 'train') if m in sys.modules)))\n"
            f"assert main(['simulate', '--users', '150', '--over', '300', '--plots', {str(tmp_path / 'p')!r}]) == 0\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| packing + spot | 150 |" in proc.stdout
    assert '[]' in proc.stdout.splitlines()         # no matplotlib, torch or train before --plots
    rows = json.loads((tmp_path / "a.json").read_text())["policies"]
    assert [r["name"] for r in rows] == ["one job per request", "packing", "packing + warm pool", "packing + spot"]
    for r in rows:
        assert r["completed"] == 150 and r["failed"] == 0 and r["cost_per_lora"] > 0
        assert r["time_to_model"]["p50"] <= r["time_to_model"]["p95"] <= r["time_to_model"]["p99"]
        assert 0 < r["train_share"] <= 1 and r["instance_hours"] > 0
    for name in ("ttm_cdf.png", "instances.png"):
        assert (tmp_path / "p" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_launch_pending_and_the_simulation_cut_a_backlog_into_the_same_jobs(settings, tmp_path):
    """Ten long and six short requests, launch_pending on moto vs the simulator's first run
    (K <= 4, <= 8 tasks per job): the same jobs, with the same instance counts."""
    from fanout.service import Service, launch_pending, register_upload

    steps = [1600] * 10 + [200] * 6
    svc = Service.from_settings(settings)
    s3 = svc.objects.s3
    for i, n in enumerate(steps):
        s3.put_object(Bucket=settings.bucket, Key=f"requests/user{i}/req/images/0.jpg", Body=b"jpg")
        key = f"requests/user{i}/req/request.json"
        s3.put_object(Bucket=settings.bucket, Key=key, Body=json.dumps(
            {"instance_prompt": "a photo of sks dog", "hyperparameters": {"max_train_steps": n}}).encode())
        assert register_upload(svc, settings.bucket, key) == "created"
    out = launch_pending(svc)
    sm = svc.launcher.sagemaker
    real = sorted((len(svc.requests.by_job(j)), sm.describe_training_job(TrainingJobName=j)["ResourceConfig"]["InstanceCount"])
                  for j in out["jobs"])
    trace = tmp_path / "backlog.csv"
    trace.write_text("time_s,max_train_steps\n" + "".join(f"0,{n}\n" for n in steps))
    policy = Policy(max_instances=settings.max_instances, max_tasks_per_job=settings.max_tasks_per_job,
                    max_jobs_per_run=settings.max_jobs_per_run, launch_rate=100.0)
    run = simulate(Workload(arrival="trace", trace=str(trace)), aws=replace(ROOMY, api_tps=100.0), policy=policy)
    assert run.throttles == 0 and {j.created for j in run.jobs} == {0.0, 0.01, 0.02}     # one launcher run
    simulated = sorted((j.size, j.k) for j in run.jobs)
    assert real == simulated == [(2, 2), (6, 4), (8, 4)]
