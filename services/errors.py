"""The one family of errors the engine raises; each carries a machine ``code``.

Resolvers turn a ``DomainError`` into a GraphQL error whose ``extensions.code`` is
the code and whose message is the sentence here, written for a person to act on.
Anything that is not a ``DomainError`` is a bug and is masked as INTERNAL_ERROR.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "BAD_REQUEST"

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = extensions


class ValidationError(DomainError):
    code = "VALIDATION"


class NotFoundError(DomainError):
    code = "NOT_FOUND"


class ForbiddenError(DomainError):
    code = "FORBIDDEN"


class UnauthenticatedError(DomainError):
    code = "UNAUTHENTICATED"


class InvalidStateError(DomainError):
    code = "INVALID_STATE"


class ConflictError(DomainError):
    code = "CONFLICT"


class GatewayError(DomainError):
    code = "GATEWAY_ERROR"


class GatewayUnavailableError(DomainError):
    code = "GATEWAY_UNAVAILABLE"


class AccountHasOverdueInvoicesError(DomainError):
    code = "ACCOUNT_HAS_OVERDUE_INVOICES"
