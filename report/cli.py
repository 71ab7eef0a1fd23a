"""`fanout report JOB_NAME | WORKDIR`: a job's page, from S3 or from a `fanout local` workdir.

fanout's CLI declares the arguments (so `fanout --help` works without this package's
dependencies) and imports this module only when `report` is run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def run(args) -> int:
    from report.errors import ReportError

    target = Path(args.job)
    try:
        if target.is_dir():
            from report.job import write_local_job_page

            if args.upload:
                raise ReportError("--upload is for a SageMaker job; a `fanout local` workdir's page stays in it")
            page = write_local_job_page(target, price_per_hour=args.price_per_hour)
            print(f"job report: {page}")
            return 0
        from fanout.request import JOB_NAME_PATTERN

        if not re.match(JOB_NAME_PATTERN, args.job):
            raise ReportError(f"{args.job} is neither a folder (a `fanout local` workdir) nor a SageMaker "
                              "training job name (letters, digits and '-', at most 63)")
        return _from_s3(args)
    except ReportError as exc:
        print(f"fanout report: error: {exc}", file=sys.stderr)
        return 2


def _from_s3(args) -> int:
    from fanout.settings import make_client
    from report.job import write_s3_job_page

    out = Path(args.out or f"{args.job}-report")
    page, uploaded = write_s3_job_page(
        make_client("sagemaker", args.region, args.endpoint_url), make_client("s3", args.region, args.endpoint_url),
        args.job, out, upload=args.upload, price_per_hour=args.price_per_hour)
    print(f"job report: {page} (task pages beside it)")
    if uploaded:
        print(f"uploaded: {uploaded}")
    return 0
