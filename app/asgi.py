"""The Starlette application: /graphql (HTTP and graphql-transport-ws), /healthz,
and the routes added by the payment and export modules.

A request goes through the HTTP metrics, CORS, the edge (``app.edge``), persisted
queries and the routes; a known read (``app.known_reads``) is answered by
``KnownReadLane`` in front of all that, under the same metrics and edge guard.

``create_app`` is the one factory used by the CLI, the tests and the benchmarks; it
takes an engine and a clock so tests can share their database and move time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cross_web import HTTPException
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLRequestData
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UNSET

from app.analytics_exports import analytics_export_routes
from app.auth import TokenError, authenticate, bearer_token
from app.connections import LiveConnection
from app.documents import document_routes
from app.edge import GRAPHQL_PATH, Edge, EdgeRefusal, StrictGraphQLRequests
from app.exports import export_routes
from app.graphiql import graphiql_page, graphiql_routes
from app.graphql import build_schema
from app.health import healthz, readyz
from app.known_reads import KnownReads
from app.lifecycle import running
from app.metrics import HttpMetrics, Metrics, metered, metrics_endpoint
from app.persisted import PersistedQueries, PersistedQueryMiddleware, replay
from app.ratelimit import CostBuckets
from app.routes import extra_routes
from app.settings import Settings
from app.state import AppState, build_state
from resolvers.compiled import EncodedData
from resolvers.context import RequestContext
from resolvers.viewer import Viewer
from services.clock import Clock

log = logging.getLogger("deskbill")
# Where the known-read lane leaves its sub-response for Strawberry's path.
_SUB_RESPONSE = "deskbill.sub_response"
# Where the lane in front of the application leaves the context it handed on.
_HANDED_ON = "deskbill.handed_on"


class DeskbillGraphQL(StrictGraphQLRequests, GraphQL[RequestContext, None]):
    # Finds the token in every form clients send it and keeps the access current.
    graphql_transport_ws_handler_class = LiveConnection

    def __init__(self, state: AppState) -> None:
        buckets = state.services.get("cost_buckets")
        if buckets is None and state.settings.rate_limits:
            # Kept on the state: tests reach the buckets (and their clock) there.
            buckets = state.services["cost_buckets"] = CostBuckets(state.settings)
        schema = build_schema(state.settings, buckets)
        super().__init__(
            schema,
            graphql_ide="graphiql" if state.settings.graphiql else None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            # Pages of the CORS origins may open subscriptions too.
            allowed_origins=state.settings.cors_origins,
        )
        self.state = state
        # Repeated compiled reads, answered without Strawberry's execution.
        self.known_reads = state.services["known_reads"] = KnownReads(
            schema, state.settings, buckets
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope=scope, receive=receive)
        if _HANDED_ON in scope:
            # The lane in front (KnownReadLane) tried it already: go on with its context.
            response, context = None, scope.pop(_HANDED_ON)
        else:
            response, context = await self.known_lane(request)
        if response is None:
            try:
                response = await self.run(request, context=context)
            except HTTPException as refused:  # as strawberry's own __call__ answers it
                response = PlainTextResponse(refused.reason, status_code=refused.status_code)
        await response(scope, receive, send)

    async def known_lane(self, request: Request) -> tuple[Response | None, Any]:
        """A known read (app/known_reads.py) answered straight from the request: the
        body parsed once, the viewer kept or read on the request's connection, the
        answer encoded as Strawberry would. Anything else — or a known read that
        steps aside — returns no response, and the context to go on with (UNSET when
        nothing was started), so the ordinary path charges and reads nothing twice."""
        headers = request.headers
        if not self.state.settings.compiled_reads or not self.known_reads:
            return None, UNSET
        if "application/json" not in headers.get("content-type", ""):
            return None, UNSET
        if self._get_stream_transport_from_headers(headers) is not None:
            return None, UNSET
        # Read once and kept by the request; a body over the bound raises to the edge,
        # exactly as on the ordinary path.
        body = await request.body()
        try:
            token = bearer_token(headers.get("authorization"))
            parsed = self.parse_json(body)
        except (TokenError, EdgeRefusal):
            return None, UNSET  # the ordinary path refuses it, coded
        query, name = parsed.get("query"), parsed.get("operationName")
        if token is None or not self.known_reads.knows(query, name):
            return None, UNSET
        sub_response = await super().get_sub_response(request)
        request.scope[_SUB_RESPONSE] = sub_response
        context = self._context(request, sub_response)
        context.token = token
        async with _read_connection(self.state.read_engine) as connection:
            context.connection = connection
            try:
                kept = self.known_reads.kept_viewer(token, context)
                if kept is not None:
                    context.viewer, context.viewer_unconfirmed = kept, True
                else:
                    await self._read_viewer(context)
                result = None
                if context.viewer is not None:
                    context.known_read_tried = True
                    result = await self.known_reads.answer(
                        context, query, name, parsed.get("variables")
                    )
            finally:
                context.connection = None
        if result is None:
            return None, context
        self.known_reads.lane_answered += 1
        response_data = await self.process_result(request, result)
        return self.create_response(response_data, sub_response), context

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        # The known-read lane's, when it handed the request on with its context.
        kept = request.scope.get(_SUB_RESPONSE)
        return kept if isinstance(kept, Response) else await super().get_sub_response(request)

    def _context(self, request: Any, response: Any) -> RequestContext:
        state = self.state
        return RequestContext(
            sessionmaker=state.sessionmaker,
            read_sessionmaker=state.read_sessionmaker,
            clock=state.clock,
            announce=state.announce,
            services=state.services,
            request=request,
            response=response,
        )

    async def get_context(self, request: Any, response: Any) -> RequestContext:
        context = self._context(request, response)
        if isinstance(request, WebSocket):
            return context  # authenticated by connection_init (app.connections)
        try:
            # Read in execute_operation, on the request's one connection.
            context.token = bearer_token(request.headers.get("authorization"))
        except TokenError as refused:
            context.auth_error = str(refused)
        return context

    async def render_graphql_ide(self, request: Request) -> Response:
        return graphiql_page()  # vendored assets, never a CDN

    async def execute_operation(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> Any:
        """One read connection per request: the token's user is read on it, and a
        compiled read (resolvers/compiled) answers on it; the ordinary resolvers
        release it at once and use their own sessions."""
        context: RequestContext = kwargs["context"]
        if context.token is None:
            return await super().execute_operation(*args, **kwargs)
        # A pool that has no connection to give raises out of here, and the edge
        # middleware answers it (503, SERVICE_BUSY, Retry-After).
        return await self._on_one_connection(*args, **kwargs)

    async def _on_one_connection(self, *args: Any, **kwargs: Any) -> Any:
        context: RequestContext = kwargs["context"]
        assert context.token is not None
        async with _read_connection(self.state.read_engine) as connection:
            context.connection = connection
            kept = self._kept_viewer_for(context, kwargs)
            if kept is not None:
                # Confirmed by the known read's own statement (app/known_reads.py).
                context.viewer, context.viewer_unconfirmed = kept, True
            else:
                await self._read_viewer(context)
            if not self.state.settings.compiled_reads:
                await context.release_connection()
            try:
                return await super().execute_operation(*args, **kwargs)
            finally:
                context.connection = None

    def _kept_viewer_for(self, context: RequestContext, kwargs: dict[str, Any]) -> Viewer | None:
        """A viewer kept from an earlier request with this token, when this request is a
        known read (the only kind that confirms it in its own statement)."""
        data = kwargs.get("request_data")
        if not isinstance(data, GraphQLRequestData) or kwargs["request_adapter"].method != "POST":
            return None
        if context.token is None or not self.known_reads.knows(data.query, data.operation_name):
            return None
        return self.known_reads.kept_viewer(context.token, context)

    async def _read_viewer(self, context: RequestContext) -> None:
        """Authenticate the request's token on its connection (the one statement of
        ``app.auth``); a person's viewer is kept for the next known read."""
        assert context.token is not None
        context.viewer, context.viewer_unconfirmed = None, False
        try:
            await self._authenticate(context, context.token, context.connection)
        except TokenError as refused:
            context.auth_error = str(refused)
            self.known_reads.forget_viewer(context.token)
            await context.release_connection()
            return
        if context.viewer is not None:
            self.known_reads.keep_viewer(context.token, context.viewer)

    async def execute_single(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> Any:
        """A known read (app/known_reads.py) is answered directly; any other operation
        goes through Strawberry, and a read the compiled path answered there becomes
        known."""
        context: RequestContext = kwargs["context"]
        data: GraphQLRequestData = kwargs["request_data"]
        query, name, variables = data.query, data.operation_name, data.variables
        if kwargs["request_adapter"].method == "POST" and not context.known_read_tried:
            known = await self.known_reads.answer(context, query, name, variables)
            if known is not None:
                return known
        if context.viewer_unconfirmed:
            # A kept viewer that did not answer: read it for real before anything else.
            await self._read_viewer(context)
        result = await super().execute_single(*args, **kwargs)
        document = context.compiled_document
        if document is not None and query is not None and isinstance(result.data, EncodedData):
            if not result.errors:
                self.known_reads.learn(query, name, document)
        return result

    def encode_json(self, data: object) -> str | bytes:
        # A compiled read's result is the response body, already encoded.
        if isinstance(data, dict) and isinstance(data.get("data"), EncodedData):
            encoded = data["data"].encoded
            extensions = data.get("extensions")
            if len(data) == 1 or not extensions:
                return encoded
            # Only ``extensions.cost`` (app.guards) joins a compiled read's body, which
            # is one JSON object: the member goes in before its closing brace.
            assert set(data) == {"data", "extensions"} and encoded.endswith(b"}")
            return encoded[:-1] + b',"extensions":' + json.dumps(extensions).encode() + b"}"
        return super().encode_json(data)

    async def _authenticate(
        self, context: RequestContext, token: str, connection: AsyncConnection | None = None
    ) -> None:
        now = self.state.clock.now()
        if connection is None:
            async with self.state.read_sessionmaker() as session:
                context.viewer = await authenticate(session, self.state.settings, token, now)
        else:
            async with AsyncSession(bind=connection) as session:
                context.viewer = await authenticate(session, self.state.settings, token, now)


class KnownReadLane:
    """In front of the whole application: a POST to /graphql that is a known read
    (app/known_reads.py) is answered here, under the same HTTP metrics and an ``Edge``
    of its own (request id, body bound, deadline, coded refusals) as any request,
    but without the middleware stack and the routing in between, which took a quarter
    of such a read's CPU. A request the lane does not answer goes on with its body and
    the context it started into the stack just inside the edge (``inner``, where
    ``LaneJoin`` stands), having had everything outside it already; any other request
    goes through the whole stack (``app``).

    A browser's request (an ``Origin`` header) skips the lane when CORS is configured,
    since only the stack adds CORS headers; a request for a persisted query goes on
    untried. There is no lane when only persisted queries are allowed."""

    def __init__(
        self,
        graphql: DeskbillGraphQL,
        metrics: Metrics,
        settings: Settings,
        persisted: PersistedQueries,
    ) -> None:
        self.graphql = graphql
        self.metrics = metrics
        self.cors = bool(settings.cors_origins)
        self.persisted = persisted.mode
        self.guarded = Edge(self._answer, settings)  # the edge, around the lane's answer
        self.app: ASGIApp | None = None
        self.inner: ASGIApp | None = None
        self.answered = 0  # known reads answered here, in front of the stack

    def front(self, app: ASGIApp) -> ASGIApp:
        """The lane in front of ``app``, the stack built with ``LaneJoin`` in it."""
        assert self.inner is not None, "the stack has no LaneJoin"
        self.app = app
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != GRAPHQL_PATH
            or (self.cors and any(name == b"origin" for name, _ in scope["headers"]))
        ):
            await self.app(scope, receive, send)
            return
        await metered(self.metrics, scope, receive, send, self.guarded)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.inner is not None
        request = Request(scope=scope, receive=receive)
        body = await request.body()  # bounded by the edge; kept by the request
        if self.persisted == "off" or b"persistedQuery" not in body:
            response, context = await self.graphql.known_lane(request)
            if response is not None:
                self.answered += 1
                await response(scope, receive, send)
                return
            scope[_HANDED_ON] = context
        await self.inner(scope, replay(body, receive), send)


class LaneJoin:
    """Stands in the stack just inside the edge: where requests the known-read lane
    does not answer join it (the lane learns the rest of the stack from here)."""

    def __init__(self, app: ASGIApp, lane: KnownReadLane) -> None:
        self.app = lane.inner = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class DeskbillApp(Starlette):
    """The Starlette application, with the known-read lane in front of its stack."""

    lane: KnownReadLane | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return stack if self.lane is None else self.lane.front(stack)


@asynccontextmanager
async def _read_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            # Each read is one statement: no BEGIN/ROLLBACK round trips around it.
            await connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


def cors_middleware(settings: Settings) -> list[Middleware]:
    """CORS for the configured browser origins only (none by default). Credentials are
    bearer tokens the page sends itself, never cookies, so ``allow_credentials`` stays
    off; preflights may ask for ``Authorization`` and ``Content-Type``."""
    if not settings.cors_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=False,
            max_age=600,
        )
    ]


def create_app(
    settings: Settings | None = None,
    *,
    engine: AsyncEngine | None = None,
    clock: Clock | None = None,
    start_worker: bool | None = None,
) -> Starlette:
    settings = settings or Settings.from_env()
    state = build_state(settings, engine=engine, clock=clock)
    metrics = Metrics()
    metrics.watch_pool(state.engine)
    state.services["metrics"] = metrics
    persisted = PersistedQueries.from_file(
        settings.persisted_queries, settings.persisted_queries_file
    )
    graphql = DeskbillGraphQL(state)
    lane = KnownReadLane(graphql, metrics, settings, persisted)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running(state, start_worker=start_worker):
            yield
        if state.read_engine is not state.engine:
            await state.read_engine.dispose()
        if engine is None:
            await state.engine.dispose()

    app = DeskbillApp(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint(state)),
            *extra_routes(state),
            *export_routes(state),
            *document_routes(state),
            *analytics_export_routes(state),
            *(graphiql_routes() if settings.graphiql else []),
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(HttpMetrics, metrics=metrics),
            # CORS outside the edge, so the edge's own refusals carry its headers too;
            # the edge outside persisted queries, so the body limit holds for them.
            *cors_middleware(settings),
            Middleware(Edge, settings=settings),
            Middleware(LaneJoin, lane=lane),
            Middleware(PersistedQueryMiddleware, store=persisted),
        ],
    )
    app.state.deskbill = state
    if settings.compiled_reads and persisted.mode != "only":
        app.lane = lane
    return app
