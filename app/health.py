"""Probes for an orchestrator: ``/healthz`` says the process is alive, ``/readyz`` that it
can serve — the database answers and the broadcast channel is connected.

A load balancer takes a process out of rotation while ``/readyz`` fails, and a supervisor
restarts one whose ``/healthz`` fails; so liveness never depends on the database (a
database outage must not restart every server at once).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.state import AppState

READY_TIMEOUT_SECONDS = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state: AppState = request.app.state.deskbill
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), state.read_sessionmaker() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as failure:
        checks["database"] = f"unreachable: {type(failure).__name__}"
    hub = state.services.get("hub")
    if hub is None:
        checks["broadcast"] = "not started"
    else:
        checks["broadcast"] = "ok" if hub.connected else "reconnecting"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
