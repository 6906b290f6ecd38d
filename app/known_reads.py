"""Known reads: a query document the compiled path has answered once is answered
again straight from the HTTP view, without Strawberry's per-request execution.

What a document alone decides — that it parses, validates against the schema, stays
within the depth, token and alias limits, holds no NUL in its literals, is a query and
compiles to one statement — was settled the first time it was answered, and the
schema does not change while the process runs. So a repeated request only needs
what depends on the request itself, and gets all of it, in the order the ordinary
path has: the viewer read with the token (on the request's one connection), the
variables coerced to their declared types, the arguments through the same input
limits, NUL in the variables, the cost within the viewer's budget and taken from
the buckets (``app.guards.admit``), the heavy lane, the metrics, and
``X-Query-Cost``. The answer is the same statement the compiled path runs.

Anything unusual goes down the ordinary path, which answers it with its coded errors:
a refusal of any kind, bad variables or arguments, a database error, an operation
the compiled path steps aside for. If the buckets were already charged, the
ordinary path is told (``RequestContext.admission``) and charges nothing again.

The HTTP view (``app.asgi``) answers a known read before Strawberry's request
handling starts: it parses the body once (the same strict parser), reads or keeps
the viewer on the request's connection and encodes the answer as Strawberry would. A
request it cannot answer goes on down Strawberry's path with the same context, so
nothing is charged or read twice.

The viewer, too, need not cost a statement of its own. A person's viewer read for a
Deskbill token is kept (bounded) by that token; when a known read comes with the
same token, its signature and expiry are checked as always and the kept viewer
answers, in one statement that also confirms the user, the organization and the
member's accounts are still what they were (``resolvers.viewer.still_holds``). When
they are not, the viewer is forgotten and read again, and the request goes on as it
would have: refused if the user lost access, answered with the new role or accounts
otherwise. API keys (whose use is noted) and identity-provider tokens are read every
time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from graphql import DocumentNode
from strawberry.types import ExecutionResult

from app.auth import TokenError, decode_token, is_own_token
from app.graphql import DeskbillSchema
from app.guards import Admission, admit
from app.metrics import count_operation, metrics_of
from app.ratelimit import CostBuckets
from app.settings import Settings
from resolvers.compiled import EncodedData, Prepared, prepare, run
from resolvers.context import RequestContext
from resolvers.viewer import Viewer

log = logging.getLogger("deskbill.known_reads")

# Distinct documents kept per process; a client that sends ever new documents only
# ever goes down the ordinary path once each, as before.
KNOWN_READS_MAX = 512
# Viewers kept by token; each one is confirmed by the statement that uses it.
KEPT_VIEWERS_MAX = 4096


@dataclass(frozen=True)
class KnownRead:
    document: DocumentNode


class KnownReads:
    """The documents answered by the compiled path, by (query text, operation name)."""

    def __init__(
        self, schema: DeskbillSchema, settings: Settings, buckets: CostBuckets | None
    ) -> None:
        self.schema = schema
        self.settings = settings
        self.buckets = buckets
        self.lane = schema.heavy_lane
        self._known: dict[tuple[str, str | None], KnownRead] = {}
        self._viewers: dict[str, Viewer] = {}
        self.answered = 0  # requests this path answered (tests, and a look in a debugger)
        self.viewers_confirmed = 0  # ... with a kept viewer, confirmed in its statement
        self.lane_answered = 0  # ... straight from the request (app/asgi.py), no Strawberry

    def __len__(self) -> int:
        return len(self._known)

    def knows(self, query: str | None, operation_name: str | None) -> bool:
        return query is not None and (query, operation_name) in self._known

    def keep_viewer(self, token: str, viewer: Viewer) -> None:
        """Keep a person's viewer read for a Deskbill token (others are not kept)."""
        if viewer.user_id is None or not is_own_token(self.settings, token):
            return
        if len(self._viewers) >= KEPT_VIEWERS_MAX:
            self._viewers.clear()
        self._viewers[token] = viewer

    def forget_viewer(self, token: str) -> None:
        self._viewers.pop(token, None)

    def kept_viewer(self, token: str, context: RequestContext) -> Viewer | None:
        """The viewer kept for ``token`` if the token itself is still good (signature,
        issuer, expiry against the clock); the rows behind it are confirmed later."""
        viewer = self._viewers.get(token)
        if viewer is None:
            return None
        try:
            claims = decode_token(self.settings, token, context.clock.now())
        except TokenError:
            self.forget_viewer(token)
            return None
        if claims.get("sub") != str(viewer.user_id) or claims.get("org") != viewer.organization_id:
            return None
        return viewer

    def learn(self, query: str, operation_name: str | None, document: DocumentNode) -> None:
        if len(self._known) >= KNOWN_READS_MAX:
            self._known.clear()
        self._known[(query, operation_name)] = KnownRead(document)

    async def answer(
        self,
        context: RequestContext,
        query: str | None,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> ExecutionResult | None:
        """The result of a known read, or None to go down the ordinary path."""
        who, connection = context.viewer, context.connection
        if query is None or who is None or connection is None:
            return None
        known = self._known.get((query, operation_name))
        if known is None:
            return None
        started = time.perf_counter()
        try:
            prepared = prepare(self.schema, known.document, query, operation_name, variables, who)
            if prepared is None:
                return None
            # Taken last before running: a refusal here has taken nothing.
            admission = admit(
                self.settings, self.buckets, self.schema, known.document, query,
                variables, operation_name, who, context.request,
            )  # fmt: skip
        except Exception:
            return None  # the ordinary path refuses it, coded
        context.admission = admission
        confirm = context.viewer_unconfirmed
        try:
            encoded = await self._run(prepared, context, admission, confirm)
        except Exception:
            log.debug("known read fell back", exc_info=True)
            return None
        if encoded is None:
            # The kept viewer no longer holds: read it again (the caller does).
            if context.token is not None:
                self.forget_viewer(context.token)
            return None
        if confirm:
            context.viewer_unconfirmed = False
            self.viewers_confirmed += 1
        self.answered += 1
        metrics = metrics_of(context)
        if metrics is not None:
            count_operation(metrics, operation_name, "query", "OK", started)
        extensions = {"cost": admission.grant.extension()} if admission.grant else None
        return ExecutionResult(data=EncodedData(encoded), errors=None, extensions=extensions)

    async def _run(
        self, prepared: Prepared, context: RequestContext, admission: Admission, confirm: bool
    ) -> bytes | None:
        assert context.connection is not None and context.viewer is not None
        if admission.cost > self.lane.threshold:
            async with self.lane.places:
                return await run(prepared, context.connection, context.viewer, confirm)
        return await run(prepared, context.connection, context.viewer, confirm)
