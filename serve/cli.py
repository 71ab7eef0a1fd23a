"""``python -m serve`` / the image's ``serve``: flags from ServeConfig, SERVE_* beneath them."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from serve.config import ENV_PREFIX, ServeConfig
from serve.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve", description="SageMaker inference server: one base pipeline per GPU, "
                                "each request's user LoRA hot-swapped in (docs/serving.md). Every flag can also be "
                                f"set as {ENV_PREFIX}<NAME> (SageMaker runs `serve` without arguments).")
    for f in dataclasses.fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        p.add_argument(flag, type=type(f.default), default=None, help=f"{f.metadata['help']} (default: {f.default!r})",
                       **kwargs)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = ServeConfig.from_env(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    except ConfigError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from serve.app import create_app
    from serve.service import Server

    uvicorn.run(create_app(Server(cfg)), host=cfg.host, port=cfg.port, log_level=args.log_level,
                access_log=False, timeout_keep_alive=75)  # SageMaker keeps connections open 60 s
    return 0
