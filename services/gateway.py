"""The payment gateway port and its two adapters: Stripe, and "off" (no key configured).

The engine speaks to a ``PaymentGateway``; ``StripeGateway`` implements it with the
official ``stripe`` library (async methods over httpx), ``OffGateway`` refuses every
card operation so offline payments keep working without a key.

Retries are ours, not the library's: the client is built with ``max_network_retries=0``
and ``_call`` retries a bounded number of times on timeouts, connection errors, 409s
and 5xx responses, always with the caller's idempotency key, so a retried
``create_payment_intent`` can never charge twice. When every attempt ends without an
answer the outcome is unknown (the object may exist): ``GatewayOutcomeUnknownError``
tells the caller to keep its row pending and ask again later with the same key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import stripe

from services.errors import DomainError, GatewayError, GatewayUnavailableError

T = TypeVar("T")

WEBHOOK_TOLERANCE_SECONDS = 300

OFF_MESSAGE = (
    "Card payments are off: no Stripe key is configured. "
    "Record the payment offline (cash, cheque, bank transfer) instead."
)


class CardDeclinedError(GatewayError):
    """The card was declined. ``intent`` is the PaymentIntent the decline left behind
    (Stripe creates it before confirming), so the attempt can still be matched to it."""

    def __init__(
        self,
        message: str,
        *,
        decline_code: str | None,
        intent: IntentState | None = None,
    ) -> None:
        super().__init__(message, decline_code=decline_code)
        self.decline_code = decline_code
        self.intent = intent


class GatewayOutcomeUnknownError(GatewayError):
    """Every attempt timed out or failed on the gateway's side: the object may or may
    not exist. Ask again with the same idempotency key to learn which."""


class InvalidWebhookError(DomainError):
    """A webhook whose signature or timestamp does not check out (HTTP 400)."""

    code = "INVALID_WEBHOOK"


@dataclass(frozen=True)
class IntentState:
    """What the engine needs of a PaymentIntent, from an API response or an event."""

    id: str
    status: str
    amount: int
    currency: str
    amount_received: int = 0
    client_secret: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    payment_method: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> IntentState:
        error = obj.get("last_payment_error") or {}
        payment_method = obj.get("payment_method")
        if isinstance(payment_method, Mapping):
            payment_method = payment_method.get("id")
        return cls(
            id=str(obj["id"]),
            status=str(obj["status"]),
            amount=int(obj.get("amount") or 0),
            currency=str(obj.get("currency") or "").upper(),
            amount_received=int(obj.get("amount_received") or 0),
            client_secret=obj.get("client_secret"),
            error_code=error.get("decline_code") or error.get("code"),
            error_message=error.get("message"),
            payment_method=payment_method,
            metadata=dict(obj.get("metadata") or {}),
        )


@dataclass(frozen=True)
class RefundState:
    id: str
    status: str
    amount: int
    payment_intent: str | None = None
    failure_reason: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> RefundState:
        intent = obj.get("payment_intent")
        if isinstance(intent, Mapping):
            intent = intent.get("id")
        return cls(
            id=str(obj["id"]),
            status=str(obj["status"]),
            amount=int(obj.get("amount") or 0),
            payment_intent=intent,
            failure_reason=obj.get("failure_reason"),
            metadata=dict(obj.get("metadata") or {}),
        )


@dataclass(frozen=True)
class SavedCard:
    """A card saved at the gateway for a customer (a Stripe PaymentMethod of type card)."""

    id: str
    customer: str | None
    brand: str
    last4: str
    exp_month: int | None = None
    exp_year: int | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> SavedCard:
        customer = obj.get("customer")
        if isinstance(customer, Mapping):
            customer = customer.get("id")
        card = obj.get("card") or {}
        month, year = card.get("exp_month"), card.get("exp_year")
        return cls(
            id=str(obj["id"]),
            customer=str(customer) if customer else None,
            brand=str(card.get("brand") or "unknown"),
            last4=str(card.get("last4") or ""),
            exp_month=int(month) if month is not None else None,
            exp_year=int(year) if year is not None else None,
        )


class PaymentGateway(Protocol):
    """The engine's view of a card gateway. Every call is network I/O: never call it
    while holding a database transaction that others wait on."""

    @property
    def enabled(self) -> bool: ...

    async def create_customer(
        self, *, email: str | None, name: str, metadata: Mapping[str, str], idempotency_key: str
    ) -> str: ...

    async def create_setup_intent(self, *, customer: str, idempotency_key: str) -> str: ...

    async def create_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        customer: str | None,
        payment_method: str | None,
        off_session: bool,
        confirm: bool,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> IntentState: ...

    async def retrieve_payment_intent(self, intent_id: str) -> IntentState: ...

    async def cancel_payment_intent(self, intent_id: str) -> IntentState: ...

    async def create_refund(
        self,
        *,
        payment_intent: str,
        amount: int,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> RefundState: ...

    async def retrieve_refund(self, refund_id: str) -> RefundState: ...

    async def list_cards(self, customer: str) -> list[SavedCard]: ...

    async def retrieve_card(self, payment_method: str) -> SavedCard: ...

    async def detach_card(self, payment_method: str) -> SavedCard: ...

    def verify_webhook(
        self, raw_body: bytes, signature_header: str | None, *, now: datetime
    ) -> dict[str, Any]: ...


# Stripe's live-mode secret and restricted keys; a sandbox never uses one (rules §9.4).
LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")


class SandboxLiveKeyError(DomainError):
    code = "SANDBOX_LIVE_KEY"


class SandboxOrganization(Protocol):
    @property
    def sandbox(self) -> bool: ...

    @property
    def slug(self) -> str: ...


def gateway_for(gateway: PaymentGateway, org: SandboxOrganization) -> PaymentGateway:
    """``gateway`` if ``org`` may talk to Stripe through it: a sandbox organization only
    with a test-mode key, so trying things out never moves real money. Otherwise
    SANDBOX_LIVE_KEY, before anything is written or sent."""
    if org.sandbox and getattr(gateway, "live_mode", False):
        raise SandboxLiveKeyError(
            f"“{org.slug}” is a sandbox organization and this server's Stripe key is a "
            "live-mode key; card payments of a sandbox need a test-mode key (sk_test_… or "
            "rk_test_…). Offline payments keep working."
        )
    return gateway


class OffGateway:
    """No Stripe key: card operations are refused with a sentence an admin can act on."""

    enabled = False

    def _off(self) -> GatewayUnavailableError:
        return GatewayUnavailableError(OFF_MESSAGE)

    async def create_customer(self, **_: Any) -> str:
        raise self._off()

    async def create_setup_intent(self, **_: Any) -> str:
        raise self._off()

    async def create_payment_intent(self, **_: Any) -> IntentState:
        raise self._off()

    async def retrieve_payment_intent(self, intent_id: str) -> IntentState:
        raise self._off()

    async def cancel_payment_intent(self, intent_id: str) -> IntentState:
        raise self._off()

    async def create_refund(self, **_: Any) -> RefundState:
        raise self._off()

    async def retrieve_refund(self, refund_id: str) -> RefundState:
        raise self._off()

    async def list_cards(self, customer: str) -> list[SavedCard]:
        raise self._off()

    async def retrieve_card(self, payment_method: str) -> SavedCard:
        raise self._off()

    async def detach_card(self, payment_method: str) -> SavedCard:
        raise self._off()

    def verify_webhook(
        self, raw_body: bytes, signature_header: str | None, *, now: datetime
    ) -> dict[str, Any]:
        raise InvalidWebhookError("Stripe webhooks are refused: card payments are off.")


def _cause(exc: stripe.StripeError | None) -> str | None:
    """Why the gateway did not answer, in our words: the library's own messages name
    hosts, retries and internals that mean nothing to the person reading the error."""
    if exc is None:
        return None
    if isinstance(exc, stripe.APIConnectionError):
        return "The card gateway could not be reached (no connection, or it timed out)."
    if isinstance(exc, stripe.RateLimitError):
        return "The card gateway asked us to slow down."
    if exc.http_status == 409:
        return "The card gateway was busy with the same request."
    return f"The card gateway answered with an error of its own (HTTP {exc.http_status})."


def _is_transient(exc: stripe.StripeError) -> bool:
    """Errors after which the request may or may not have taken effect."""
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    status = exc.http_status or 0
    return status == 409 or status >= 500


class StripeGateway:
    """The official ``stripe`` library, async, with our own bounded retries."""

    enabled = True

    def __init__(
        self,
        api_key: str,
        webhook_secret: str | None = None,
        *,
        api_base: str | None = None,
        timeout: float = 30.0,
        max_attempts: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 4.0,
    ) -> None:
        self._webhook_secret = webhook_secret
        # Live money: a sandbox organization is refused this gateway (``gateway_for``).
        self.live_mode = api_key.startswith(LIVE_KEY_PREFIXES)
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._http = stripe.HTTPXClient(timeout=timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=self._http,
        )

    async def aclose(self) -> None:
        await self._http.close_async()

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        """Run ``request`` (which carries its idempotency key) until it answers."""
        last: stripe.StripeError | None = None
        for attempt in range(self._max_attempts):
            if attempt:
                await asyncio.sleep(min(self._backoff * 2 ** (attempt - 1), self._max_backoff))
            try:
                return await request()
            except stripe.CardError as exc:
                raise _declined(exc) from exc
            except stripe.StripeError as exc:
                if not _is_transient(exc):
                    raise _refused(exc) from exc
                last = exc
        raise GatewayOutcomeUnknownError(
            "The card gateway did not answer; the attempt is kept and will be checked again.",
            cause=_cause(last),
        )

    async def create_customer(
        self, *, email: str | None, name: str, metadata: Mapping[str, str], idempotency_key: str
    ) -> str:
        params: dict[str, Any] = {"name": name, "metadata": dict(metadata)}
        if email:
            params["email"] = email
        customer = await self._call(
            lambda: self._client.v1.customers.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
        )
        return str(customer.id)

    async def create_setup_intent(self, *, customer: str, idempotency_key: str) -> str:
        intent = await self._call(
            lambda: self._client.v1.setup_intents.create_async(
                {"customer": customer, "usage": "off_session"},
                {"idempotency_key": idempotency_key},
            )
        )
        return str(intent.client_secret)

    async def create_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        customer: str | None,
        payment_method: str | None,
        off_session: bool,
        confirm: bool,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> IntentState:
        params: dict[str, Any] = {
            "amount": amount,
            "currency": currency.lower(),
            "metadata": dict(metadata),
        }
        if customer:
            params["customer"] = customer
        if payment_method:
            params["payment_method"] = payment_method
        if off_session:
            params["off_session"] = True
        if confirm:
            params["confirm"] = True
        else:
            params["setup_future_usage"] = "off_session"
        intent = await self._call(
            lambda: self._client.v1.payment_intents.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
        )
        return IntentState.from_object(intent.to_dict())

    async def retrieve_payment_intent(self, intent_id: str) -> IntentState:
        intent = await self._call(lambda: self._client.v1.payment_intents.retrieve_async(intent_id))
        return IntentState.from_object(intent.to_dict())

    async def cancel_payment_intent(self, intent_id: str) -> IntentState:
        intent = await self._call(
            lambda: self._client.v1.payment_intents.cancel_async(
                intent_id, {}, {"idempotency_key": f"deskbill-cancel-{intent_id}"}
            )
        )
        return IntentState.from_object(intent.to_dict())

    async def create_refund(
        self,
        *,
        payment_intent: str,
        amount: int,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> RefundState:
        refund = await self._call(
            lambda: self._client.v1.refunds.create_async(
                {"payment_intent": payment_intent, "amount": amount, "metadata": dict(metadata)},
                {"idempotency_key": idempotency_key},
            )
        )
        return RefundState.from_object(refund.to_dict())

    async def retrieve_refund(self, refund_id: str) -> RefundState:
        refund = await self._call(lambda: self._client.v1.refunds.retrieve_async(refund_id))
        return RefundState.from_object(refund.to_dict())

    async def list_cards(self, customer: str) -> list[SavedCard]:
        # A customer with more than 100 saved cards shows its newest 100 (Stripe's order).
        found = await self._call(
            lambda: self._client.v1.payment_methods.list_async(
                {"customer": customer, "type": "card", "limit": 100}
            )
        )
        return [SavedCard.from_object(pm.to_dict()) for pm in found.data]

    async def retrieve_card(self, payment_method: str) -> SavedCard:
        found = await self._call(
            lambda: self._client.v1.payment_methods.retrieve_async(payment_method)
        )
        return SavedCard.from_object(found.to_dict())

    async def detach_card(self, payment_method: str) -> SavedCard:
        detached = await self._call(
            lambda: self._client.v1.payment_methods.detach_async(
                payment_method, {}, {"idempotency_key": f"deskbill-detach-{payment_method}"}
            )
        )
        return SavedCard.from_object(detached.to_dict())

    def verify_webhook(
        self, raw_body: bytes, signature_header: str | None, *, now: datetime
    ) -> dict[str, Any]:
        """Check the ``Stripe-Signature`` header against the raw body, and the signed
        timestamp against our clock (not the library's ``time.time()``, so tests that
        move time still get the 300 s tolerance)."""
        if not self._webhook_secret:
            raise InvalidWebhookError("Stripe webhooks are refused: no webhook secret is set.")
        try:
            stripe.WebhookSignature.verify_header(
                raw_body, signature_header, self._webhook_secret, tolerance=None
            )
        except stripe.SignatureVerificationError as exc:
            raise InvalidWebhookError(f"Invalid Stripe signature: {exc}") from None
        timestamp = _signed_timestamp(signature_header or "")
        if abs(now.timestamp() - timestamp) > WEBHOOK_TOLERANCE_SECONDS:
            raise InvalidWebhookError(
                "Stripe signature timestamp is outside the 300 second tolerance."
            )
        try:
            event = json.loads(raw_body)
        except ValueError:
            raise InvalidWebhookError("The webhook body is not JSON.") from None
        if not isinstance(event, dict) or "id" not in event or "type" not in event:
            raise InvalidWebhookError("The webhook body is not a Stripe event.")
        return event


def _signed_timestamp(header: str) -> int:
    for item in header.split(","):
        name, _, value = item.partition("=")
        if name.strip() == "t":
            return int(value)
    raise InvalidWebhookError("Stripe signature has no timestamp.")


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return {}


def _declined(exc: stripe.CardError) -> CardDeclinedError:
    error = _error_body(exc)
    intent_obj = error.get("payment_intent")
    intent = IntentState.from_object(intent_obj) if isinstance(intent_obj, dict) else None
    return CardDeclinedError(
        error.get("message") or exc.user_message or "The card was declined.",
        decline_code=error.get("decline_code") or error.get("code") or exc.code,
        intent=intent,
    )


def _refused(exc: stripe.StripeError) -> GatewayError:
    error = _error_body(exc)
    return GatewayError(
        error.get("message") or exc.user_message or "The card gateway refused the request.",
        gateway_code=error.get("code") or exc.code,
        gateway_type=error.get("type"),
        http_status=exc.http_status,
    )


def gateway_from_settings(
    api_key: str | None,
    webhook_secret: str | None,
    api_base: str | None = None,
    **options: Any,
) -> PaymentGateway:
    """Stripe when a key is configured, otherwise the gateway is off."""
    if not api_key:
        return OffGateway()
    return StripeGateway(api_key, webhook_secret, api_base=api_base, **options)
