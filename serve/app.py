"""SageMaker's inference contract over FastAPI: ``GET /ping``, ``POST /invocations`` (the same
for real-time and asynchronous endpoints: an async endpoint's platform reads the input object,
posts it here, and writes the answer to the output location), and ``GET /stats``.

Renders run in worker threads; /ping is answered on the event loop, so it stays fast while a
long render runs. Every error is JSON ``{"error": "..."}`` with its status; an unexpected
exception is a 500 for that request only.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from serve.errors import ServeError, TooLarge
from serve.service import Server

log = logging.getLogger("serve")
MAX_BODY_BYTES = 1024 * 1024


def create_app(server: Server):
    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=server.start, name="load-base", daemon=True).start()
        yield

    app = FastAPI(title="lora-fanout serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/ping")
    async def ping():
        status = 200 if server.state == "ready" else 503
        return JSONResponse({"status": server.state, **({"error": server.error} if server.error else {})}, status)

    @app.get("/stats")
    async def stats():
        return server.stats()

    @app.post("/invocations")
    async def invocations(request: Request):
        try:
            declared = int(request.headers.get("content-length") or 0)
            if declared > MAX_BODY_BYTES:
                raise TooLarge(f"the request body is {declared} bytes, over the {MAX_BODY_BYTES} accepted")
            raw = await request.body()
            if len(raw) > MAX_BODY_BYTES:
                raise TooLarge(f"the request body is {len(raw)} bytes, over the {MAX_BODY_BYTES} accepted")
            return await run_in_threadpool(server.invoke, raw)
        except ServeError as exc:
            server.failed(exc)
            return JSONResponse({"error": str(exc)}, exc.status)
        except Exception as exc:  # one request's failure; the server goes on with the next
            log.exception("invocation failed")
            server.failed(ServeError("internal"))
            return JSONResponse({"error": f"internal error: {type(exc).__name__}: {str(exc)[:500]}"}, 500)

    return app
