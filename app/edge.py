"""The HTTP edge: what every request goes through before and after the routes.

``Edge`` is an ASGI middleware around the whole application. Per HTTP request it

* gives the request an id (a sane incoming ``X-Request-Id`` is kept), puts it on the
  response and, through ``app.logs.request_id``, on every log line of the request;
* bounds the body to ``max_body_bytes`` while it streams in: a ``Content-Length`` over
  the bound is refused before one byte is read, and a body that grows past it (chunked,
  or lying about its length) is refused the moment it does — 413 ``PAYLOAD_TOO_LARGE``;
* gives the request ``request_timeout_seconds`` to start its response, and answers 503
  ``SERVICE_BUSY`` with ``Retry-After`` when that runs out or when the database says
  "not now" (``app.database.busy_reason``: no pool connection in time, a lock or
  statement deadline, a lost connection);
* bounds a GraphQL response to ``max_response_bytes`` (``RESPONSE_TOO_LARGE``, never a
  cut body) and turns the plain-text refusals of the GraphQL view (unknown operation,
  missing query, wrong content type) into coded JSON;
* masks anything unexpected as a coded 500 whose ``requestId`` matches the one ERROR
  line with the traceback.

Websocket connections get a request id and a bound on each message's size (close code
1009). ``StrictGraphQLRequests`` is mixed into the GraphQL view: it reads a POST body
as strict UTF-8 JSON and refuses, with a 400 that says what is wrong, anything that is
not one GraphQL request object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.database import busy_reason
from app.logs import current_request_id, request_id
from app.settings import Settings

log = logging.getLogger("deskbill.edge")

BAD_REQUEST = "BAD_REQUEST"
VALIDATION = "VALIDATION"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
SERVICE_BUSY = "SERVICE_BUSY"
INTERNAL_ERROR = "INTERNAL_ERROR"
RETRY_AFTER_SECONDS = 2
BUSY_MESSAGE = (
    "The service is too busy to answer right now; nothing was changed. "
    f"Try again in {RETRY_AFTER_SECONDS} seconds."
)
INTERNAL_MESSAGE = (
    "Something went wrong on our side; the request changed nothing. It has been logged."
)
REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")
GRAPHQL_PATH = "/graphql"
WS_MESSAGE_TOO_BIG = 1009


class EdgeRefusal(Exception):
    """A request refused at the edge: an HTTP status, a code and a sentence."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def busy(reason: str = BUSY_MESSAGE) -> EdgeRefusal:
    return EdgeRefusal(503, SERVICE_BUSY, reason, {"retry-after": str(RETRY_AFTER_SECONDS)})


def error_document(message: str, code: str, **extensions: object) -> bytes:
    body = {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}
    return json.dumps(body, separators=(",", ":")).encode()


def _bad(message: str) -> EdgeRefusal:
    return EdgeRefusal(400, BAD_REQUEST, message)


EXAMPLE = 'such as {"query": "{ viewer { role } }"}'


class StrictGraphQLRequests:
    """Mixed into the strawberry view: a GraphQL POST body is one JSON object with a
    non-empty string ``query``, optional object ``variables``/``extensions`` and an
    optional string ``operationName`` — anything else is a coded 400, never a 500."""

    def parse_json(self, data: str | bytes) -> Any:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise _bad(
                    f"The request body is not valid UTF-8 (byte {bad.start}); "
                    "send the JSON encoded as UTF-8."
                ) from None
        if not data.strip():
            raise _bad(f"The request body is empty; send a JSON object {EXAMPLE}.")
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError as bad:
            raise _bad(
                f"The request body is not valid JSON ({bad.msg} at line {bad.lineno}, "
                f"column {bad.colno})."
            ) from None
        except RecursionError:
            raise _bad("The request body nests JSON too deeply.") from None
        if not isinstance(parsed, dict):
            kind = "null" if parsed is None else type(parsed).__name__
            raise _bad(f"The request body must be one JSON object {EXAMPLE}, not a JSON {kind}.")
        query = parsed.get("query")
        if not isinstance(query, str) or not query.strip():
            raise _bad("The request needs a `query`: the GraphQL document as a non-empty string.")
        if "\x00" in query:
            line = query.count("\n", 0, query.index("\x00")) + 1
            raise EdgeRefusal(
                400,
                VALIDATION,
                f"The query text contains a NUL character (U+0000) on line {line}; "
                "remove it and send the request again.",
            )
        for key in ("variables", "extensions"):
            if not isinstance(parsed.get(key), dict | None):
                raise _bad(f"`{key}` must be a JSON object (or null) when given.")
        if not isinstance(parsed.get("operationName"), str | None):
            raise _bad("`operationName` must be a string (or null) when given.")
        return parsed


def new_request_id() -> str:
    """32 hex digits, like a UUID's: random enough that ids never meet in one log, and
    not a counter, which would tell a client how busy the server is. Not a secret, so
    not from the system's entropy (``uuid4`` costs a system call per request)."""
    return f"{random.getrandbits(128):032x}"


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SANE_REQUEST_ID.fullmatch(text) else None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Edge:
    """ASGI middleware: request ids, body and response bounds, deadline, coded refusals."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.max_response = settings.max_response_bytes
        self.timeout = settings.request_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _respond(self, send: Send, refusal: EdgeRefusal, **extensions: object) -> None:
        body = error_document(refusal.message, refusal.code, **extensions)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (REQUEST_ID_HEADER.encode(), current_request_id().encode()),
            *((k.encode(), v.encode()) for k, v in refusal.headers.items()),
        ]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = request_id.set(_incoming_request_id(scope) or new_request_id())
        try:
            await self._guarded(scope, receive, send)
        finally:
            request_id.reset(token)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        too_large = EdgeRefusal(
            413,
            PAYLOAD_TOO_LARGE,
            f"The request body is over the limit of {self.max_body:,} bytes; "
            "send less (split a large request into several).",
        )
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            log.info("refused a body of %s bytes: %s", declared, PAYLOAD_TOO_LARGE)
            await self._respond(send, too_large)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise too_large
            return message

        graphql = scope.get("path") == GRAPHQL_PATH
        started = False
        held: Message | None = None  # a plain-text refusal being rewritten
        held_body = b""
        replaced = False
        deadline = asyncio.timeout(self.timeout)

        async def edge_send(message: Message) -> None:
            nonlocal started, held, held_body, replaced
            if message["type"] == "http.response.start":
                deadline.reschedule(None)  # the deadline is for the first byte
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = current_request_id()
                if graphql:
                    length = int(headers.get("content-length") or 0)
                    if length > self.max_response:
                        started = replaced = True
                        await self._respond(send, self._response_too_large(length))
                        return
                    if message["status"] >= 400 and headers.get("content-type", "").startswith(
                        "text/plain"
                    ):
                        held = message
                        return
                started = True
            elif message["type"] == "http.response.body":
                if replaced:
                    return
                if held is not None:
                    held_body += message.get("body", b"")
                    if not message.get("more_body", False):
                        status = held["status"]
                        held = None
                        started = True
                        await self._respond(
                            send,
                            EdgeRefusal(status, BAD_REQUEST, held_body.decode("utf-8", "replace")),
                        )
                    return
            await send(message)

        try:
            async with deadline:
                await self.app(scope, bounded_receive, edge_send)
        except EdgeRefusal as refusal:
            if started:
                raise
            log.info(
                "refused %s %s: %s %s",
                scope.get("method"),
                scope.get("path"),
                refusal.code,
                refusal.message,
            )
            await self._respond(send, refusal)
        except TimeoutError:
            if not deadline.expired() or started:
                await self._internal(send, started)
                return
            log.warning("request ran past its deadline of %ss", self.timeout)
            await self._respond(
                send,
                busy(
                    f"The request did not finish within {self.timeout:g} seconds; nothing "
                    f"more was done. Try again in {RETRY_AFTER_SECONDS} seconds, or ask "
                    "for less."
                ),
            )
        except Exception as error:
            if (reason := busy_reason(error)) is not None and not started:
                # The database said "not now" outside GraphQL (token check, health,
                # webhooks, exports): the same coded 503 as inside it.
                log.warning("database busy: %s", error.__class__.__name__)
                await self._respond(send, busy(reason))
                return
            await self._internal(send, started)

    def _response_too_large(self, length: int) -> EdgeRefusal:
        return EdgeRefusal(
            200,
            RESPONSE_TOO_LARGE,
            f"The response would be {length:,} bytes, over the limit of "
            f"{self.max_response:,}; ask for fewer fields or smaller pages (`first`).",
        )

    async def _internal(self, send: Send, started: bool) -> None:
        log.exception("internal error")
        if not started:
            refusal = EdgeRefusal(500, INTERNAL_ERROR, INTERNAL_MESSAGE)
            await self._respond(send, refusal, requestId=current_request_id())
        # Once the response has started nothing coded can follow: returning without
        # finishing it makes the server cut the connection, so the client sees a failed
        # transfer rather than a body that merely looks short.

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = request_id.set(_incoming_request_id(scope) or new_request_id())
        closed = False

        async def bounded_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.receive":
                text = message.get("text")
                size = len(message.get("bytes") or b"")
                if text is not None:
                    # A character is at most four bytes: only long texts are encoded.
                    size = len(text.encode()) if len(text) * 4 > self.max_body else len(text)
                if size > self.max_body:
                    log.info("websocket message of %s bytes refused", size)
                    await send(
                        {
                            "type": "websocket.close",
                            "code": WS_MESSAGE_TOO_BIG,
                            "reason": f"A message may be at most {self.max_body:,} bytes.",
                        }
                    )
                    closed = True
                    return {"type": "websocket.disconnect", "code": WS_MESSAGE_TOO_BIG}
            return message

        async def edge_send(message: Message) -> None:
            if closed:
                return  # the connection was closed here; the app is winding down
            if message["type"] == "websocket.accept":
                headers = list(message.get("headers") or [])
                headers.append((REQUEST_ID_HEADER.encode(), current_request_id().encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, bounded_receive, edge_send)
        finally:
            request_id.reset(token)
