"""Plain HTTP routes beside /graphql: the Stripe webhook, and the pay-link page
(``app.paypage``).

``POST /webhooks/stripe`` hands the raw body and the ``Stripe-Signature`` header to
``handle_stripe_webhook``: a bad signature, a stale timestamp or a malformed event is
400 and changes nothing; anything it accepts (duplicates included) is 200, so Stripe
stops redelivering. After the event's transaction commits, its new events are
announced so subscribers hear the payment or refund move.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.metrics import Metrics
from app.paypage import pay_routes
from app.state import AppState
from services.events import log_head, newest_events
from services.gateway import InvalidWebhookError, OffGateway
from services.webhooks import handle_stripe_webhook


def stripe_webhook(state: AppState) -> Route:
    async def receive(request: Request) -> Response:
        # The signature covers the exact bytes Stripe sent: never re-encode the JSON.
        body = await request.body()
        header = request.headers.get("stripe-signature")
        gateway = state.services.get("gateway") or OffGateway()
        head = await log_head(state.read_sessionmaker)
        try:
            outcome = await handle_stripe_webhook(
                state.sessionmaker, gateway, body, header, state.clock
            )
        except InvalidWebhookError as refused:
            _count(state, "refused")
            return JSONResponse({"error": refused.message, "code": refused.code}, status_code=400)
        _count(
            state, "applied" if outcome.applied else "duplicate" if outcome.duplicate else "ignored"
        )
        if outcome.applied:
            for org, newest in (await newest_events(state.read_sessionmaker, head)).items():
                await state.announce(org, newest)
        return JSONResponse(
            {"received": True, "duplicate": outcome.duplicate, "applied": outcome.applied}
        )

    return Route("/webhooks/stripe", receive, methods=["POST"])


def _outcome(applied: bool, duplicate: bool) -> str:
    return "applied" if applied else "duplicate" if duplicate else "ignored"


def _count(state: AppState, outcome: str) -> None:
    metrics = state.services.get("metrics")
    if isinstance(metrics, Metrics):
        metrics.webhooks.labels(outcome).inc()


def extra_routes(state: AppState) -> list[BaseRoute]:
    return [stripe_webhook(state), *pay_routes(state)]
