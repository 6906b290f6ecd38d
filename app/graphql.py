"""The Strawberry ``Schema`` assembled from the resolvers, with its safety belts:
depth, token and alias limits, parser and validation caches, and coded errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
    ValidationCache,
)

from app.database import busy_reason
from app.metrics import OperationMetrics
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

INTERNAL_MESSAGE = (
    "Something went wrong on our side; the request changed nothing. It has been logged."
)


def _code(error: GraphQLError) -> None:
    """Give ``error`` its ``extensions.code`` (in place: strawberry keeps several
    references to the same error objects), masking anything unexpected."""
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
        log.warning("database busy in %s: %s", error.path, original.__class__.__name__)
        error.message = reason
        error.extensions = {"code": "SERVICE_BUSY"}
        error.original_error = None
    else:
        log.error("internal error in %s", error.path, exc_info=original)
        error.message = INTERNAL_MESSAGE
        error.extensions = {"code": "INTERNAL_ERROR"}
        error.original_error = None
    error.args = (error.message,)


class CodedErrors(SchemaExtension):
    """Every error leaves with ``extensions.code``; anything unexpected is masked."""

    def on_operation(self) -> Iterator[None]:
        try:
            yield
        except GraphQLError as raised:
            # ParserCache re-raises syntax errors through the extensions; strawberry
            # then returns this very error object, so coding it here is enough.
            _code(raised)
            raise
        result = self.execution_context.result
        document = self.execution_context.graphql_document
        for error in getattr(result, "errors", None) or ():
            _code(error)
            name_refused_field(error, document)
        for error in self.execution_context.pre_execution_errors or ():
            _code(error)
            name_refused_field(error, document)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        """Each message of a subscription, coded and masked before it is sent."""
        for error in getattr(result, "errors", None) or ():
            _code(error)
        yield


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    settings = settings or Settings()
    # The limiters' rule classes are made once: a fresh class per request (what a
    # factory of QueryDepthLimiter would do) is part of ValidationCache's key, so the
    # cache would never hit and every request would be validated again.
    limits = [
        *QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules,
    ]
    extensions: list[Any] = [
        # Outermost, so it sees each error after CodedErrors has given it its code.
        OperationMetrics,
        CodedErrors,
        lambda: AddValidationRules(limits),
        lambda: MaxTokensLimiter(max_token_count=settings.max_query_tokens),
        # Bounded caches: parse and validate each distinct document once.
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(maxsize=256),
    ]
    if settings.compiled_reads:
        # Last: it answers at execution, after every check above has run.
        extensions.append(CompiledReads)
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        # Money, dates and instants parse strictly (schema/scalars.py).
        scalar_overrides=SCALAR_OVERRIDES,
        extensions=extensions,
    )
