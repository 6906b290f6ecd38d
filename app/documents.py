"""Invoice and credit-note documents over HTTP (rules §13).

``GET /documents/invoices/{id}.pdf`` and ``.html`` serve the document of any invoice,
draft or credit note by its global id (a document keeps its id for life, so a link
handed out for a draft still works once it has finalized as a credit note);
``/documents/credit-notes/{id}.pdf`` and ``.html`` serve credit notes only. The
bearer token and scoping are the graph's: admins and analysts see their whole
organization, members their own accounts and their teams'; anything else, another
organization's document included, is 404 with the same words as a missing one.

PDFs are drawn in a worker thread, a few at a time per process, so a burst of
downloads neither blocks the event loop nor takes every core.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.auth import TokenError, authenticate, bearer_token
from app.state import AppState
from schema.ids import decode
from services.document_rendering import render_html, render_pdf
from services.documents import Document, load_document
from services.errors import DomainError

log = logging.getLogger("deskbill.documents")
# Renders at once per process; the rest wait their turn (each takes one core).
RENDERS_AT_ONCE = 2
_MEDIA_TYPES = {"pdf": "application/pdf", "html": "text/html; charset=utf-8"}
_STATUS = {"NOT_FOUND": 404, "INVALID_STATE": 409, "VALIDATION": 400}


def _refusal(message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=_STATUS.get(code, 400))


def _file_name(doc: Document, extension: str) -> str:
    return f"{doc.number or f'draft-{doc.invoice_id}'}.{extension}"


def document_routes(state: AppState) -> list[BaseRoute]:
    renders = asyncio.Semaphore(RENDERS_AT_ONCE)

    async def serve(request: Request, *, credit_notes_only: bool, extension: str) -> Response:
        try:
            token = bearer_token(request.headers.get("authorization"))
            if token is None:
                raise TokenError("Send `Authorization: Bearer <token>` to download a document.")
            async with state.read_sessionmaker() as session:
                who = await authenticate(session, state.settings, token, state.clock.now())
        except TokenError as refused:
            return JSONResponse({"error": str(refused), "code": "UNAUTHENTICATED"}, status_code=401)
        decoded = decode(request.path_params["id"])
        missing = "No such document here; check the id (as the graph gives it out)."
        if decoded is None or decoded[0] not in ("Invoice", "CreditNote"):
            return _refusal(missing, "NOT_FOUND")
        try:
            async with state.read_sessionmaker() as session:
                doc = await load_document(session, who.organization_id, decoded[1])
        except DomainError as refused:
            return _refusal(refused.message, refused.code)
        # Same words for a document of someone else's account as for none at all.
        if doc is None or not who.can_see_account(doc.account_id):
            return _refusal(missing, "NOT_FOUND")
        if credit_notes_only and not doc.is_credit_note:
            return _refusal(
                "This document is not a credit note; it is at "
                f"/documents/invoices/{request.path_params['id']}.{extension}.",
                "NOT_FOUND",
            )
        try:
            if extension == "html":
                body: bytes = (await asyncio.to_thread(render_html, doc)).encode()
            else:
                async with renders:
                    body = await asyncio.to_thread(render_pdf, doc)
        except DomainError as refused:
            return _refusal(refused.message, refused.code)
        return Response(
            body,
            media_type=_MEDIA_TYPES[extension],
            headers={
                "Content-Disposition": f'inline; filename="{_file_name(doc, extension)}"',
                # A member's invoice is theirs alone: no shared cache keeps it.
                "Cache-Control": "private, no-cache",
                "X-Content-Type-Options": "nosniff",
            },
        )

    def route(path: str, *, credit_notes_only: bool, extension: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return await serve(request, credit_notes_only=credit_notes_only, extension=extension)

        return Route(path, endpoint, methods=["GET"])

    return [
        route(f"/documents/{kind}/{{id}}.{extension}", credit_notes_only=kind == "credit-notes",
              extension=extension)
        for kind in ("invoices", "credit-notes")
        for extension in ("pdf", "html")
    ]  # fmt: skip
