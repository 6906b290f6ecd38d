"""``/pay/{token}``: the page a pay link in an invoice e-mail opens, served by
Deskbill itself with no sign-in and nothing loaded from elsewhere (no script at all).

``GET`` shows the invoice (number, lines, balance) and what the link can do; ``POST``
(the page's one button) charges the saved card through ``services.paylinks.pay``.
Every state answers with its own status code (``services.paylinks.HTTP_STATUS``):
a link that is not ours 404, expired or used 410, a paid or unpayable invoice 409, a
decline 402 — and none of them charges anything.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from app.state import AppState
from services import paylinks
from services.events import log_head, newest_events
from services.gateway import OffGateway, PaymentGateway

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
_PROBLEMS = {
    paylinks.LinkState.INVALID,
    paylinks.LinkState.EXPIRED,
    paylinks.LinkState.USED,
    paylinks.LinkState.NOT_PAYABLE,
    paylinks.LinkState.PAYMENT_FAILED,
}
_DONE = {paylinks.LinkState.PAID, paylinks.LinkState.PAYMENT_SUCCEEDED}
# The page is the member's own business: no caching, no framing, no referrer leaking
# the token to another site, and no script or style from anywhere else.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}


def render(page: paylinks.PayPage) -> Response:
    tone = "problem" if page.state in _PROBLEMS else "done" if page.state in _DONE else ""
    html = _env.get_template("pay_page.html").render(page=page, tone=tone)
    return HTMLResponse(html, status_code=page.http_status, headers=_HEADERS)


def pay_routes(state: AppState) -> list[BaseRoute]:
    def gateway() -> PaymentGateway:
        found: PaymentGateway | None = state.services.get("gateway")
        return found if found is not None else OffGateway()

    async def show(request: Request) -> Response:
        token = request.path_params["token"]
        return render(await paylinks.page(state.sessionmaker, gateway(), token, state.clock.now()))

    async def pay(request: Request) -> Response:
        token = request.path_params["token"]
        head = await log_head(state.read_sessionmaker)
        page = await paylinks.pay(state.sessionmaker, gateway(), token, state.clock.now())
        # The payment committed in transactions of its own: wake the subscribers.
        for org, newest in (await newest_events(state.read_sessionmaker, head)).items():
            await state.announce(org, newest)
        return render(page)

    return [
        Route("/pay/{token}", show, methods=["GET"]),
        Route("/pay/{token}", pay, methods=["POST"]),
    ]
