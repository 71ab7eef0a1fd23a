"""`fanout submit`: validate, plan, upload the task list, create one K-instance job.

The job name is derived from the batch (task list + job hyperparameters), so running the
same submit again - after a timeout, a crash, a lost response - finds the job it already
created instead of starting a second one.
"""

from __future__ import annotations

import json
import sys

from dataclasses import replace

from fanout.families import FAMILIES, family_id, resolve_family
from fanout.request import LaunchConfig, prepare_job
from fanout.tasks import load_tasks


def add_submit(sub, aws_args, key_values) -> None:
    p = sub.add_parser("submit", help="create one K-instance SageMaker training job for a task list")
    p.add_argument("file", help="task list (JSON Lines or JSON array)")
    p.add_argument("--instances", "-k", type=int, required=True, help="instances in the job (K)")
    p.add_argument("--image", required=True, help="training image URI (ECR)")
    p.add_argument("--role", required=True, help="SageMaker execution role ARN")
    p.add_argument("--model-uri", required=True, help="s3:// base diffusers pipeline folder")
    p.add_argument("--images-uri", required=True, help="s3:// prefix the tasks' instance_data folders are under")
    p.add_argument("--output-uri", required=True, help="s3:// prefix for task list, checkpoints, model.tar.gz")
    p.add_argument("--class-uri", help="s3:// prefix of class images (optional `class` channel)")
    p.add_argument("--eval-uri", help="s3:// prefix of the scorer models clip/, dino/, face/ (optional `eval` "
                                      "channel: tasks are scored and judged by quality_gate; docs/quality.md)")
    p.add_argument("--instance-type", default=LaunchConfig.instance_type,
                   help="training instance type (its GPUs are the job's slots; its GPU memory is checked)")
    p.add_argument("--family", default="", metavar="NAME",
                   help=f"model family of the base ({', '.join(FAMILIES)}); default: read from "
                        "<model-uri>/model_index.json (a dry run reads nothing and then does not check GPU memory)")
    p.add_argument("--volume-gb", type=int, default=LaunchConfig.volume_size_gb)
    p.add_argument("--job-name", help="explicit job name (default: derived from the batch)")
    p.add_argument("--job-prefix", default=LaunchConfig.job_prefix)
    p.add_argument("--hp", action="append", metavar="KEY=VALUE", help="job-level hyperparameter (repeatable)")
    p.add_argument("--max-runtime", type=int, default=LaunchConfig.max_runtime_s, help="seconds")
    p.add_argument("--spot", action="store_true", help="managed spot training")
    p.add_argument("--max-wait", type=int, default=0, help="spot wait limit in seconds (default 2x max runtime)")
    p.add_argument("--warm-pool-seconds", type=int, default=0, help="keep instances warm this long after the job")
    p.add_argument("--retry-attempts", type=int, default=0, help="SageMaker RetryStrategy attempts (0: off)")
    p.add_argument("--subnets", nargs="+", default=[])
    p.add_argument("--security-groups", nargs="+", default=[])
    p.add_argument("--network-isolation", action="store_true", help="no network in the container (no per-task uploads)")
    p.add_argument("--inter-container-encryption", action="store_true")
    p.add_argument("--kms-key", help="KMS key for output and volumes")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="job tag (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the CreateTrainingJob request; touch nothing")
    aws_args(p)
    p.set_defaults(func=lambda args: cmd_submit(args, key_values))


def launch_config(args, key_values) -> LaunchConfig:
    return LaunchConfig(
        image_uri=args.image, role_arn=args.role, model_uri=args.model_uri, images_uri=args.images_uri,
        output_uri=args.output_uri, class_uri=args.class_uri, eval_uri=args.eval_uri, instance_type=args.instance_type,
        instance_count=args.instances, volume_size_gb=args.volume_gb, hyperparameters=key_values(args.hp, "--hp"),
        max_runtime_s=args.max_runtime, spot=args.spot, max_wait_s=args.max_wait,
        warm_pool_s=args.warm_pool_seconds, retry_attempts=args.retry_attempts,
        subnets=tuple(args.subnets), security_groups=tuple(args.security_groups),
        network_isolation=args.network_isolation, inter_container_encryption=args.inter_container_encryption,
        kms_key=args.kms_key, volume_kms_key=args.kms_key,
        tags={k: str(v) for k, v in key_values(args.tag, "--tag").items()}, job_prefix=args.job_prefix,
    )


def cmd_submit(args, key_values) -> int:
    tasks = load_tasks(args.file)
    config = launch_config(args, key_values)
    config = replace(config, family=_family(args, config))
    job = prepare_job(tasks, config, job_name=args.job_name)
    dropped = [t.task_id for t, o in zip(tasks, job.tasks) if t.output_uri and not o.output_uri]
    if dropped:
        print(f"note: network isolation: per-task uploads are off for {len(dropped)} task(s); "
              "artifacts arrive in model.tar.gz when the job ends", file=sys.stderr)
    if args.dry_run:
        print(json.dumps(job.request, indent=2, sort_keys=True))
        return 0
    from fanout.launcher import Launcher
    from fanout.settings import make_client

    launcher = Launcher(make_client("sagemaker", args.region, args.endpoint_url),
                        make_client("s3", args.region, args.endpoint_url))
    result = launcher.launch(job, config.images_uri)
    if not result.created:
        print(f"note: job {result.job_name} already exists for this batch; not creating another", file=sys.stderr)
    print(result.job_name)
    return 0


def _family(args, config: LaunchConfig) -> str:
    """--family, or the family model_index.json under --model-uri names (read with the same S3
    client the launch uses); a dry run reads nothing, so without --family it cannot check fit."""
    if args.family:
        return args.family
    if not config.model_uri.startswith("s3://"):
        return ""                                   # prepare_job says what is wrong with it
    if args.dry_run:
        print("note: dry run: GPU memory fit not checked (pass --family to check it)", file=sys.stderr)
        return ""
    from fanout.settings import make_client

    spec, variant = resolve_family(s3=make_client("s3", args.region, args.endpoint_url), model_uri=config.model_uri)
    return family_id(spec, variant)
