"""Persisted queries for the member app: Apollo's automatic persisted queries protocol,
and an allow-list mode for production.

A client sends ``{"extensions": {"persistedQuery": {"version": 1, "sha256Hash": H}}}``
without the document. If this process knows ``H`` the document is filled in and the
request goes on as usual; if not, the answer is the error ``PersistedQueryNotFound``
(code ``PERSISTED_QUERY_NOT_FOUND``) and the client retries once with the document and the
hash, which registers it after checking that the hash is the document's SHA-256. So a
phone sends a 64-character hash instead of a multi-kilobyte query.

Modes (``DESKBILL_PERSISTED_QUERIES``):
- ``auto`` (default): the protocol above; documents sent in full work as always.
- ``only``: only documents of the manifest (``DESKBILL_PERSISTED_QUERIES_FILE``, a JSON
  object of ``{sha256: document}`` — what Apollo's and Relay's build tools emit) run;
  anything else is refused with ``PERSISTED_QUERY_REQUIRED``, and nothing is registered
  at run time. Production can so refuse documents its apps never ship.
- ``off``: the extension is ignored.

The store of registered documents is an in-process LRU bounded in entries and in document
size, so no client can grow it without bound. It works as ASGI middleware in front of
``/graphql`` and parses a body only when the body mentions ``persistedQuery``.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MODES = ("auto", "only", "off")
MAX_DOCUMENT_BYTES = 100_000
MAX_BODY_BYTES = 1_048_576
NOT_FOUND = "PersistedQueryNotFound"


class PersistedQueryError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def document_hash(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


class PersistedQueries:
    """Registered documents by SHA-256, bounded; the manifest's are never evicted."""

    def __init__(
        self, mode: str = "auto", manifest: Mapping[str, str] | None = None, size: int = 5000
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"persisted queries mode must be one of {', '.join(MODES)}")
        self.mode = mode
        self.size = size
        self._manifest = dict(manifest or {})
        for digest, document in self._manifest.items():
            if document_hash(document) != digest.lower():
                raise ValueError(f"the manifest's document {digest[:12]}… does not hash to its key")
        self._learned: OrderedDict[str, str] = OrderedDict()

    @classmethod
    def from_file(cls, mode: str, path: str | None, size: int = 5000) -> PersistedQueries:
        manifest: dict[str, str] = {}
        if path:
            loaded = json.loads(Path(path).read_text())
            if not isinstance(loaded, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
            ):
                raise ValueError(f"{path} must be a JSON object of sha256 → document")
            manifest = {k.lower(): v for k, v in loaded.items()}
        return cls(mode, manifest, size)

    def __len__(self) -> int:
        return len(self._learned)

    def lookup(self, digest: str) -> str | None:
        found = self._manifest.get(digest)
        if found is not None or self.mode == "only":
            return found
        document = self._learned.get(digest)
        if document is not None:
            self._learned.move_to_end(digest)
        return document

    def register(self, digest: str, document: str) -> None:
        if self.mode != "auto" or digest in self._manifest:
            return
        self._learned[digest] = document
        self._learned.move_to_end(digest)
        while len(self._learned) > self.size:
            self._learned.popitem(last=False)

    def resolve(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The request with its document filled in, or a PersistedQueryError."""
        extensions = payload.get("extensions")
        persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
        query = payload.get("query")
        if persisted is None:
            if self.mode == "only" and isinstance(query, str):
                if document_hash(query) not in self._manifest:
                    raise PersistedQueryError(
                        "PERSISTED_QUERY_REQUIRED",
                        "This server runs only registered documents; send the sha256Hash "
                        "of a document your app was built with.",
                    )
            return payload
        if not isinstance(persisted, dict) or persisted.get("version") != 1:
            raise PersistedQueryError(
                "PERSISTED_QUERY_NOT_SUPPORTED",
                "Only version 1 of the persisted query extension is supported.",
            )
        digest = persisted.get("sha256Hash")
        if not isinstance(digest, str) or len(digest) != 64 or not _is_hex(digest):
            raise PersistedQueryError(
                "VALIDATION", "`extensions.persistedQuery.sha256Hash` must be 64 hex digits."
            )
        digest = digest.lower()
        if isinstance(query, str):
            if len(query.encode()) > MAX_DOCUMENT_BYTES:
                raise PersistedQueryError(
                    "VALIDATION",
                    f"A persisted document may be at most {MAX_DOCUMENT_BYTES} bytes.",
                )
            if document_hash(query) != digest:
                raise PersistedQueryError(
                    "PERSISTED_QUERY_HASH_MISMATCH",
                    "`sha256Hash` is not the SHA-256 of the document sent with it.",
                )
            if self.mode == "only" and digest not in self._manifest:
                raise PersistedQueryError(
                    "PERSISTED_QUERY_REQUIRED",
                    "This server runs only registered documents and registers none at run "
                    "time; add the document to the manifest.",
                )
            self.register(digest, query)
            return payload
        document = self.lookup(digest)
        if document is None:
            raise PersistedQueryError("PERSISTED_QUERY_NOT_FOUND", NOT_FOUND)
        return {**payload, "query": document}


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


class PersistedQueryMiddleware:
    """Fills in persisted documents on ``POST /graphql`` before the GraphQL view reads
    the body; answers the protocol's errors itself."""

    def __init__(self, app: ASGIApp, store: PersistedQueries, path: str = "/graphql") -> None:
        self.app = app
        self.store = store
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.store.mode == "off"
            or scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") != self.path
        ):
            await self.app(scope, receive, send)
            return
        body, more = await _read(receive)
        if more or (b"persistedQuery" not in body and self.store.mode != "only"):
            # Too large to be ours to judge (the body limit answers it), or nothing to do.
            await self.app(scope, replay(body, receive, more), send)
            return
        try:
            payload = json.loads(body)
        except ValueError:
            await self.app(scope, replay(body, receive, more), send)  # the view says why
            return
        if not isinstance(payload, dict):
            await self.app(scope, replay(body, receive, more), send)
            return
        try:
            resolved = self.store.resolve(payload)
        except PersistedQueryError as refused:
            await _answer(send, refused)
            return
        if resolved is not payload:
            body = json.dumps(resolved).encode()
            scope = {**scope, "headers": _with_length(scope.get("headers", []), len(body))}
        await self.app(scope, replay(body, receive, False), send)


async def _read(receive: Receive) -> tuple[bytes, bool]:
    """The body up to ``MAX_BODY_BYTES``; ``more`` says whether it goes on."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False
        if size > MAX_BODY_BYTES:
            return b"".join(chunks), True


def replay(body: bytes, receive: Receive, more: bool = False) -> Receive:
    """A ``receive`` that gives ``body`` (already read) first, then goes on as ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


def _with_length(headers: Any, length: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return [*kept, (b"content-length", str(length).encode())]


async def _answer(send: Send, refused: PersistedQueryError) -> None:
    # Apollo's link reads the error from a 200 answer (as Apollo Server sends it).
    body = json.dumps(
        {"errors": [{"message": refused.message, "extensions": {"code": refused.code}}]}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200 if refused.code == "PERSISTED_QUERY_NOT_FOUND" else 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"private, no-cache, must-revalidate"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
