"""The Strawberry ``Schema`` assembled from the resolvers, with its safety belts:
depth, token and alias limits, parser and validation caches, and coded errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import strawberry
from graphql import GraphQLError, OperationDefinitionNode
from starlette.responses import Response
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)
from strawberry.types import ExecutionContext

from app.database import busy_reason
from app.edge import INTERNAL_MESSAGE, RETRY_AFTER_SECONDS, SERVICE_BUSY
from app.guards import HeavyLane, RequestGuards
from app.logs import current_request_id
from app.metrics import OperationMetrics
from app.ratelimit import CODE as RATE_LIMITED
from app.ratelimit import CostBuckets
from app.settings import Settings
from resolvers.compiled import CompiledReads
from resolvers.mutation import Mutation
from resolvers.query import Query
from resolvers.subscription import Subscription
from schema.limits import guard, name_refused_field
from schema.scalars import SCALAR_OVERRIDES
from services.errors import DomainError, ValidationError

log = logging.getLogger("deskbill.graphql")

# Sizes, counts and ranges of every root field's arguments (schema/limits.py).
guard(Query, Mutation, Subscription)


def _code(error: GraphQLError, operation: str | None = None) -> None:
    """Give ``error`` its ``extensions.code`` (in place: strawberry keeps several
    references to the same error objects), masking anything unexpected.

    Each error is logged once, when it is coded: a refusal the client can act on at
    INFO in one line, an internal error at ERROR with its traceback.
    """
    if (error.extensions or {}).get("code"):
        return
    original = error.original_error
    if isinstance(original, DomainError):
        error.message = original.message
        error.extensions = {"code": original.code, **original.extensions}
    elif original is None or isinstance(original, GraphQLError):
        # Parse and validation errors (depth, tokens, aliases, unknown fields, bad
        # literal values) carry no exception of ours: the message is already for people.
        error.extensions = {"code": "GRAPHQL_VALIDATION"}
    elif isinstance(original, (ValueError, TypeError)) and error.path is None:
        error.extensions = {"code": ValidationError.code}
    elif (reason := busy_reason(original)) is not None:
        # A deadline or a lost connection: the transaction rolled back, the client
        # may simply retry; worth a line in the log, not a traceback.
        log.warning(
            "database busy in %s at %s request_id=%s: %s",
            operation or "anonymous operation",
            error.path,
            current_request_id(),
            original.__class__.__name__,
        )
        error.message = reason
        error.extensions = {"code": SERVICE_BUSY, "retryAfter": RETRY_AFTER_SECONDS}
        error.original_error = None
    else:
        log.error(
            "internal error in %s at %s request_id=%s",
            operation or "anonymous operation",
            error.path,
            current_request_id(),
            exc_info=original,
        )
        error.message = INTERNAL_MESSAGE
        error.extensions = {"code": "INTERNAL_ERROR", "requestId": current_request_id()}
        error.original_error = None
    error.args = (error.message,)
    code = error.extensions["code"]
    if code not in ("INTERNAL_ERROR", SERVICE_BUSY):  # those were logged above
        log.info(
            "refused %s: %s request_id=%s %s",
            operation or "anonymous operation",
            code,
            current_request_id(),
            error.message,
        )


class CodedErrors(SchemaExtension):
    """Every error leaves with ``extensions.code``; anything unexpected is masked."""

    def _operation(self) -> str | None:
        """The operation's name for the logs: as asked for, or as the document names it."""
        context = self.execution_context
        if context.operation_name:
            return context.operation_name
        for definition in getattr(context.graphql_document, "definitions", ()):
            if isinstance(definition, OperationDefinitionNode) and definition.name:
                return definition.name.value
        return None

    def on_operation(self) -> Iterator[None]:
        try:
            yield
        except GraphQLError as raised:
            # ParserCache re-raises syntax errors through the extensions; strawberry
            # then returns this very error object, so coding it here is enough.
            _code(raised, self._operation())
            self._http_status([raised])
            raise
        operation = self._operation()
        result = self.execution_context.result
        errors = [
            *(getattr(result, "errors", None) or ()),
            *(self.execution_context.pre_execution_errors or ()),
        ]
        document = self.execution_context.graphql_document
        for error in errors:
            _code(error, operation)
            name_refused_field(error, document)
        self._http_status(errors)

    def _http_status(self, errors: list[GraphQLError]) -> None:
        """503 for SERVICE_BUSY, 429 for RATE_LIMITED, with ``Retry-After``."""
        response = getattr(self.execution_context.context, "response", None)
        if not isinstance(response, Response):
            return  # a websocket message: the code says it all
        codes = {(error.extensions or {}).get("code"): error for error in errors}
        if SERVICE_BUSY in codes:
            # Busy is the server's state, not the client's mistake: say so in HTTP too.
            response.status_code = 503
            response.headers["retry-after"] = str(RETRY_AFTER_SECONDS)
        elif (limited := codes.get(RATE_LIMITED)) is not None:
            response.status_code = 429
            response.headers["retry-after"] = str((limited.extensions or {})["retryAfter"])

    def on_stream_result(self, result: Any) -> Iterator[None]:
        """Each message of a subscription, coded and masked before it is sent."""
        for error in getattr(result, "errors", None) or ():
            _code(error, self._operation())
        yield


class DeskbillSchema(strawberry.Schema):
    heavy_lane: HeavyLane
    cost_buckets: CostBuckets | None

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Strawberry would log every error at ERROR with its traceback, refusals
        included; ``CodedErrors`` logs each one once, at the level it deserves."""


def build_schema(
    settings: Settings | None = None, buckets: CostBuckets | None = None
) -> DeskbillSchema:
    """The schema; ``buckets`` are the process's cost buckets (made here when rate
    limits are on and none are given)."""
    settings = settings or Settings()
    if buckets is None and settings.rate_limits:
        buckets = CostBuckets(settings)
    # The limiters' rule classes are made once: a fresh class per request (what a
    # factory of QueryDepthLimiter would do) is part of ValidationCache's key, so the
    # cache would never hit and every request would be validated again.
    limits = [
        *QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules,
    ]
    lane = HeavyLane(settings)  # shared by every request this schema serves
    extensions: list[Any] = [
        # Outermost, so it sees each error after CodedErrors has given it its code.
        OperationMetrics,
        CodedErrors,
        # Before any answer is made (CompiledReads too): NUL and cost refusals.
        lambda: RequestGuards(settings=settings, lane=lane, buckets=buckets),
        lambda: AddValidationRules(limits),
        lambda: MaxTokensLimiter(max_token_count=settings.max_query_tokens),
        # Bounded caches: parse and validate each distinct document once.
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(maxsize=256),
    ]
    if settings.compiled_reads:
        # Last: it answers at execution, after every check above has run.
        extensions.append(CompiledReads)
    schema = DeskbillSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        # Money, dates and instants parse strictly (schema/scalars.py).
        scalar_overrides=SCALAR_OVERRIDES,
        extensions=extensions,
    )
    schema.heavy_lane = lane
    schema.cost_buckets = buckets
    return schema
