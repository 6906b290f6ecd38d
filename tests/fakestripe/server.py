"""The fake Stripe: an ``http.server`` in a thread on 127.0.0.1, speaking Stripe's v1
form-encoded API closely enough for the official library.

State machines (the subset Deskbill uses):

* PaymentIntent: ``requires_payment_method`` → (payment method attached)
  ``requires_confirmation`` → confirm → on-session: ``processing`` until
  ``FakeStripe.process()`` decides it; off-session: decided at once →
  ``succeeded`` | ``requires_payment_method`` with ``last_payment_error`` (HTTP 402
  carrying the intent, as Stripe does) | ``canceled`` via cancel.
* Refund: ``pending`` until ``FakeStripe.settle_refunds()`` → ``succeeded`` | ``failed``
  (forced with ``fail_refunds_for``).

Idempotency: a POST's ``Idempotency-Key`` stores the first response; the same key and
the same parameters replay it, other parameters get 400 ``idempotency_error``.

Faults model a network that loses requests or responses: with phase ``before`` the
request never reaches the API (nothing happens); with ``after`` the object is
created and its response stored under the key, then the answer is lost (a 500, or a
reply slower than the client's timeout). A retry with the same key then replays the
stored response, exactly like Stripe's idempotency layer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

API_VERSION = "2026-10-28.endive"

# Stripe's test payment methods and what confirming them does. ``None`` succeeds;
# otherwise (code, decline_code, message).
CARDS: dict[str, tuple[str, str | None, str] | None] = {
    "pm_card_visa": None,
    "pm_card_mastercard": None,
    "pm_card_amex": None,
    "pm_card_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_insufficient_funds": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedExpiredCard": (
        "expired_card",
        "expired_card",
        "Your card has expired.",
    ),
    "pm_card_chargeDeclinedIncorrectCvc": (
        "incorrect_cvc",
        "incorrect_cvc",
        "Your card's security code is incorrect.",
    ),
    # Off-session it is declined as needing authentication; on-session it asks for 3DS.
    "pm_card_authenticationRequired": (
        "authentication_required",
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
    ),
}
_BRANDS = {"pm_card_visa": "visa", "pm_card_mastercard": "mastercard", "pm_card_amex": "amex"}
_LAST4 = {"pm_card_visa": "4242", "pm_card_mastercard": "4444", "pm_card_amex": "8431"}


@dataclass
class FaultPlan:
    """How often requests fail, and on which side of the object's creation."""

    rate_500: float = 0.0
    rate_timeout: float = 0.0
    phase: str = "after"  # "before", "after" or "random"
    timeout_delay: float = 1.0  # longer than the client's timeout in tests
    seed: int | None = None
    paths: tuple[str, ...] = ("/v1/",)  # only requests under these prefixes


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]


@dataclass
class _Stored:
    method: str
    path: str
    params: dict[str, Any]
    reply: _Reply


@dataclass
class Fault:
    kind: str  # "500" or "timeout"
    phase: str  # "before" or "after"
    method: str
    path: str
    idempotency_key: str | None


@dataclass
class RequestLog:
    method: str
    path: str
    idempotency_key: str | None
    status: int
    replayed: bool = False
    fault: Fault | None = None


class _ApiError(Exception):
    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = error


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def decode_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket encoding (``metadata[a]=1``, ``expand[0]=x``) into nested values."""
    result: dict[str, Any] = {}
    for raw_key, value in pairs:
        parts = re.findall(r"[^\[\]]+|\[\]", raw_key)
        target: Any = result
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(target, list):
                if last:
                    target.append(value)
                else:
                    target.append({})
                    target = target[-1]
                continue
            if last:
                target[part] = value
                continue
            upcoming = parts[i + 1]
            container: Any = [] if upcoming == "[]" else {}
            target = target.setdefault(part, container)
    return _listify(result)


def _listify(value: Any) -> Any:
    """``{"0": a, "1": b}`` (indexed arrays) become lists."""
    if isinstance(value, dict):
        converted = {k: _listify(v) for k, v in value.items()}
        if converted and all(k.isdigit() for k in converted):
            return [converted[k] for k in sorted(converted, key=int)]
        return converted
    if isinstance(value, list):
        return [_listify(v) for v in value]
    return value


def _bool(value: Any) -> bool:
    return str(value).lower() == "true"


def _int(params: dict[str, Any], name: str) -> int:
    try:
        return int(params[name])
    except (KeyError, ValueError):
        raise _ApiError(
            400,
            {
                "type": "invalid_request_error",
                "code": "parameter_missing" if name not in params else "parameter_invalid_integer",
                "param": name,
                "message": f"Missing or invalid integer parameter: {name}.",
            },
        ) from None


def _missing(kind: str, object_id: str) -> _ApiError:
    return _ApiError(
        404,
        {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "message": f"No such {kind}: '{object_id}'",
        },
    )


class FakeStripe:
    """Start with ``with FakeStripe() as fake:``; ``fake.url`` is the API base."""

    def __init__(
        self,
        *,
        api_key: str = "sk_test_deskbill_fake",
        webhook_secret: str = "whsec_deskbill_fake",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        # Timestamps of objects, events and webhook signatures; tests that move a
        # FixedClock point this at it so signatures fall within the tolerance.
        self.clock = clock
        self.faults = FaultPlan()
        self.customers: dict[str, dict[str, Any]] = {}
        self.setup_intents: dict[str, dict[str, Any]] = {}
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[RequestLog] = []
        self.faults_injected: list[Fault] = []
        self._failing_refunds: set[str] = set()
        self._declines_left: dict[str, int] = {}
        self._idempotent: dict[str, _Stored] = {}
        self._lock = threading.RLock()
        self._random = random.Random()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> FakeStripe:
        fake = self

        class Handler(_Handler):
            stripe = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-stripe",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- knobs -------------------------------------------------------------------

    def set_faults(self, **plan: Any) -> None:
        with self._lock:
            self.faults = FaultPlan(**plan)
            self._random = random.Random(self.faults.seed)

    def fail_refunds_for(self, payment_intent: str) -> None:
        """Refunds on this intent fail when settled (e.g. the card was closed)."""
        with self._lock:
            self._failing_refunds.add(payment_intent)

    def decline_next(self, payment_method: str, times: int = 1) -> None:
        """The next ``times`` charges of this card are declined for insufficient funds,
        then it pays as usual (a card topped up between an auto-pay and its retry)."""
        with self._lock:
            self._declines_left[payment_method] = times

    # -- reading state -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of every object, for assertions from the test thread."""
        with self._lock:
            return json.loads(
                json.dumps(
                    {
                        "customers": self.customers,
                        "setup_intents": self.setup_intents,
                        "payment_intents": self.payment_intents,
                        "refunds": self.refunds,
                        "payment_methods": self.payment_methods,
                        "events": self.events,
                    }
                )
            )

    def events_for(self, object_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["data"]["object"].get("id") == object_id]

    # -- what the member's app does (Stripe.js / the card sheet) -----------------

    def confirm_with_card(self, intent_id: str, payment_method: str) -> dict[str, Any]:
        """Confirm an intent on-session with a card, as the mobile card sheet would."""
        with self._lock:
            try:
                return self._confirm(intent_id, {"payment_method": payment_method})
            except _ApiError as exc:
                return {"error": exc.error}

    def confirm_setup(self, setup_intent_id: str, payment_method: str) -> dict[str, Any]:
        """Save a card through a SetupIntent, as the app's card sheet would."""
        with self._lock:
            intent = self._get(self.setup_intents, "setup_intent", setup_intent_id)
            method = self._payment_method(payment_method)
            method["customer"] = intent["customer"]
            intent["payment_method"] = payment_method
            intent["status"] = "succeeded"
            self._emit("setup_intent.succeeded", intent)
            return intent

    def process(self) -> list[str]:
        """Decide every ``processing`` intent (the bank answered); returns their ids."""
        with self._lock:
            decided = []
            for intent in self.payment_intents.values():
                if intent["status"] == "processing":
                    self._decide(intent, off_session=False)
                    decided.append(intent["id"])
            return decided

    def settle_refunds(self) -> list[str]:
        """Move every pending refund to succeeded, or failed when forced."""
        with self._lock:
            settled = []
            for refund in self.refunds.values():
                if refund["status"] != "pending":
                    continue
                if refund["payment_intent"] in self._failing_refunds:
                    refund["status"] = "failed"
                    refund["failure_reason"] = "expired_or_canceled_card"
                    self._emit("refund.failed", refund)
                else:
                    refund["status"] = "succeeded"
                self._emit("refund.updated", refund)
                self._emit("charge.refund.updated", refund)
                settled.append(refund["id"])
            return settled

    # -- webhooks ----------------------------------------------------------------

    def sign(self, payload: str, timestamp: int | None = None) -> str:
        """The ``Stripe-Signature`` header: ``t=…,v1=HMAC_SHA256(secret, "t.payload")``."""
        t = int(self.clock()) if timestamp is None else timestamp
        mac = hmac.new(
            self.webhook_secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256
        ).hexdigest()
        return f"t={t},v1={mac}"

    def signed(self, event: dict[str, Any], timestamp: int | None = None) -> tuple[bytes, str]:
        payload = json.dumps(event, indent=2)
        return payload.encode(), self.sign(payload, timestamp)

    def deliveries(
        self,
        events: list[dict[str, Any]] | None = None,
        *,
        duplicates: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        timestamp: int | None = None,
    ) -> list[tuple[bytes, str]]:
        """Signed (body, header) pairs, each event ``duplicates`` times, optionally
        shuffled, as Stripe's at-least-once, unordered delivery may produce them."""
        chosen = list(self.events if events is None else events) * duplicates
        if shuffle:
            random.Random(seed).shuffle(chosen)
        return [self.signed(event, timestamp) for event in chosen]

    def post_webhooks(
        self,
        url: str,
        events: list[dict[str, Any]] | None = None,
        *,
        duplicates: int = 1,
        shuffle: bool = False,
        seed: int = 0,
    ) -> list[int]:
        """POST the signed events to ``url``; returns the HTTP statuses."""
        statuses = []
        with httpx.Client(timeout=10) as client:
            for body, header in self.deliveries(
                events, duplicates=duplicates, shuffle=shuffle, seed=seed
            ):
                response = client.post(
                    url,
                    content=body,
                    headers={"Stripe-Signature": header, "Content-Type": "application/json"},
                )
                statuses.append(response.status_code)
        return statuses

    # -- the API -----------------------------------------------------------------

    def handle(self, method: str, path: str, params: dict[str, Any], key: str | None) -> _Reply:
        """Serve one request under the lock (faults are applied by the HTTP handler)."""
        with self._lock:
            if method == "POST" and key:
                stored = self._idempotent.get(key)
                if stored is not None:
                    if (stored.method, stored.path, stored.params) != (method, path, params):
                        return _Reply(
                            400,
                            {
                                "error": {
                                    "type": "idempotency_error",
                                    "message": (
                                        "Keys for idempotent requests can only be used with "
                                        "the same parameters they were first used with. Try "
                                        f"using a key other than '{key}' if you meant to "
                                        "execute a different request."
                                    ),
                                }
                            },
                        )
                    return _Reply(stored.reply.status, {**stored.reply.body, "_replayed": True})
            try:
                body = {**self._route(method, path, params)}
                status = 200
            except _ApiError as exc:
                status, body = exc.status, {"error": exc.error}
            # A copy: the live object moves on, the stored response must not.
            reply = _Reply(status, json.loads(json.dumps(body)))
            # Stripe stores the result of any request that started executing
            # (validation 400s are not stored).
            if method == "POST" and key and reply.status in (200, 402):
                self._idempotent[key] = _Stored(method, path, params, reply)
            return _Reply(reply.status, json.loads(json.dumps(reply.body)))

    def _route(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        parts = [p for p in path.split("/") if p][1:]  # drop "v1"
        match (method, parts):
            case ("POST", ["customers"]):
                return self._create_customer(params)
            case ("GET", ["customers", cid]):
                return self._get(self.customers, "customer", cid)
            case ("POST", ["setup_intents"]):
                return self._create_setup_intent(params)
            case ("GET", ["setup_intents", sid]):
                return self._get(self.setup_intents, "setup_intent", sid)
            case ("GET", ["payment_methods"]):
                customer = params.get("customer")
                if customer and customer not in self.customers:
                    raise _missing("customer", customer)
                found = [
                    m for m in self.payment_methods.values()
                    if m["customer"] == customer and m["type"] == params.get("type", "card")
                ]  # fmt: skip
                return {"object": "list", "data": found, "has_more": False,
                        "url": "/v1/payment_methods"}  # fmt: skip
            case ("GET", ["payment_methods", pm]):
                return self._payment_method(pm)
            case ("POST", ["payment_methods", pm, "detach"]):
                method_obj = self._payment_method(pm)
                if method_obj["customer"] is None:
                    raise _ApiError(400, {
                        "type": "invalid_request_error", "code": "payment_method_unattached",
                        "message": "The payment method you provided is not attached to a customer.",
                    })  # fmt: skip
                method_obj["customer"] = None
                return method_obj
            case ("POST", ["payment_methods", pm, "attach"]):
                method_obj = self._payment_method(pm)
                method_obj["customer"] = params.get("customer")
                return method_obj
            case ("POST", ["payment_intents"]):
                return self._create_payment_intent(params)
            case ("GET", ["payment_intents", pid]):
                return self._get(self.payment_intents, "payment_intent", pid)
            case ("POST", ["payment_intents", pid, "confirm"]):
                return self._confirm(pid, params)
            case ("POST", ["payment_intents", pid, "cancel"]):
                return self._cancel(pid, params)
            case ("POST", ["refunds"]):
                return self._create_refund(params)
            case ("GET", ["refunds", rid]):
                return self._get(self.refunds, "refund", rid)
        raise _ApiError(
            404,
            {
                "type": "invalid_request_error",
                "message": f"Unrecognized request URL ({method}: {path}).",
            },
        )

    def _get(self, table: dict[str, dict[str, Any]], kind: str, oid: str) -> dict[str, Any]:
        if oid not in table:
            raise _missing(kind, oid)
        return table[oid]

    def _create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": _new_id("cus"),
            "object": "customer",
            "created": int(self.clock()),
            "email": params.get("email"),
            "name": params.get("name"),
            "metadata": params.get("metadata", {}),
            "livemode": False,
        }
        self.customers[customer["id"]] = customer
        self._emit("customer.created", customer)
        return customer

    def _create_setup_intent(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = params.get("customer")
        if customer and customer not in self.customers:
            raise _missing("customer", customer)
        sid = _new_id("seti")
        intent = {
            "id": sid,
            "object": "setup_intent",
            "created": int(self.clock()),
            "customer": customer,
            "usage": params.get("usage", "off_session"),
            "status": "requires_payment_method",
            "client_secret": f"{sid}_secret_{uuid.uuid4().hex[:16]}",
            "metadata": params.get("metadata", {}),
            "livemode": False,
        }
        self.setup_intents[sid] = intent
        self._emit("setup_intent.created", intent)
        return intent

    def _payment_method(self, pm: str) -> dict[str, Any]:
        if pm not in CARDS:
            raise _missing("payment_method", pm)
        if pm not in self.payment_methods:
            self.payment_methods[pm] = {
                "id": pm,
                "object": "payment_method",
                "type": "card",
                "card": {
                    "brand": _BRANDS.get(pm, "visa"),
                    "last4": _LAST4.get(pm, "4242"),
                    "exp_month": 12,
                    "exp_year": 2034,
                },
                "customer": None,
            }
        return self.payment_methods[pm]

    def _create_payment_intent(self, params: dict[str, Any]) -> dict[str, Any]:
        amount = _int(params, "amount")
        if amount < 1:
            raise _ApiError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": "amount_too_small",
                    "param": "amount",
                    "message": "Amount must be at least 1.",
                },
            )
        customer = params.get("customer")
        if customer and customer not in self.customers:
            raise _missing("customer", customer)
        pm = params.get("payment_method")
        if pm:
            self._payment_method(pm)
        pid = _new_id("pi")
        intent: dict[str, Any] = {
            "id": pid,
            "object": "payment_intent",
            "created": int(self.clock()),
            "amount": amount,
            "amount_received": 0,
            "currency": str(params.get("currency", "usd")).lower(),
            "customer": customer,
            "payment_method": pm,
            "status": "requires_confirmation" if pm else "requires_payment_method",
            "client_secret": f"{pid}_secret_{uuid.uuid4().hex[:16]}",
            "last_payment_error": None,
            "latest_charge": None,
            "cancellation_reason": None,
            "setup_future_usage": params.get("setup_future_usage"),
            "metadata": params.get("metadata", {}),
            "livemode": False,
        }
        self.payment_intents[pid] = intent
        self._emit("payment_intent.created", intent)
        if _bool(params.get("confirm")):
            return self._confirm(pid, {"off_session": params.get("off_session", "false")})
        return intent

    def _confirm(self, pid: str, params: dict[str, Any]) -> dict[str, Any]:
        intent = self._get(self.payment_intents, "payment_intent", pid)
        if params.get("payment_method"):
            self._payment_method(params["payment_method"])
            intent["payment_method"] = params["payment_method"]
        if intent["status"] not in ("requires_confirmation", "requires_payment_method"):
            raise _ApiError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": "payment_intent_unexpected_state",
                    "message": (
                        "You cannot confirm this PaymentIntent because it has a status of "
                        f"{intent['status']}."
                    ),
                    "payment_intent": intent,
                },
            )
        if not intent["payment_method"]:
            raise _ApiError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": "payment_intent_unexpected_state",
                    "message": "You cannot confirm this PaymentIntent without a payment method.",
                },
            )
        intent["last_payment_error"] = None
        if _bool(params.get("off_session")):
            # Off-session there is no customer to wait for: decided at once.
            self._decide(intent, off_session=True)
        else:
            intent["status"] = "processing"
            self._emit("payment_intent.processing", intent)
        if intent["status"] == "requires_payment_method":
            error = intent["last_payment_error"]
            raise _ApiError(402, {**error, "payment_intent": intent})
        return intent

    def _decide(self, intent: dict[str, Any], *, off_session: bool) -> None:
        outcome = CARDS[intent["payment_method"]]
        if self._declines_left.get(intent["payment_method"], 0) > 0:
            self._declines_left[intent["payment_method"]] -= 1
            outcome = CARDS["pm_card_insufficient_funds"]
        if outcome is None:
            intent["status"] = "succeeded"
            intent["amount_received"] = intent["amount"]
            intent["latest_charge"] = _new_id("ch")
            self._emit("payment_intent.succeeded", intent)
            return
        code, decline_code, message = outcome
        if code == "authentication_required" and not off_session:
            intent["status"] = "requires_action"
            self._emit("payment_intent.requires_action", intent)
            return
        intent["status"] = "requires_payment_method"
        intent["last_payment_error"] = {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": message,
            "payment_method": {"id": intent["payment_method"], "type": "card"},
        }
        self._emit("payment_intent.payment_failed", intent)

    def _cancel(self, pid: str, params: dict[str, Any]) -> dict[str, Any]:
        intent = self._get(self.payment_intents, "payment_intent", pid)
        if intent["status"] in ("succeeded", "canceled"):
            raise _ApiError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": "payment_intent_unexpected_state",
                    "message": (
                        "You cannot cancel this PaymentIntent because it has a status of "
                        f"{intent['status']}."
                    ),
                },
            )
        intent["status"] = "canceled"
        intent["cancellation_reason"] = params.get("cancellation_reason", "abandoned")
        self._emit("payment_intent.canceled", intent)
        return intent

    def _create_refund(self, params: dict[str, Any]) -> dict[str, Any]:
        pid = params.get("payment_intent")
        if not pid:
            raise _ApiError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": "parameter_missing",
                    "message": "One of the following params should be provided: charge, "
                    "payment_intent.",
                },
            )
        intent = self._get(self.payment_intents, "payment_intent", pid)
        if intent["status"] != "succeeded":
            raise _ApiError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": "charge_not_refundable",
                    "message": f"This PaymentIntent ({pid}) does not have a successful charge "
                    "to refund.",
                },
            )
        refunded = sum(
            r["amount"]
            for r in self.refunds.values()
            if r["payment_intent"] == pid and r["status"] in ("pending", "succeeded")
        )
        amount = _int(params, "amount") if "amount" in params else intent["amount"] - refunded
        if amount < 1 or amount > intent["amount_received"] - refunded:
            raise _ApiError(
                400,
                {
                    "type": "invalid_request_error",
                    "code": "amount_too_large" if amount >= 1 else "amount_too_small",
                    "param": "amount",
                    "message": f"Refund amount ({amount}) is greater than unrefunded amount "
                    f"on charge ({intent['amount_received'] - refunded}).",
                },
            )
        refund = {
            "id": _new_id("re"),
            "object": "refund",
            "created": int(self.clock()),
            "amount": amount,
            "currency": intent["currency"],
            "payment_intent": pid,
            "charge": intent["latest_charge"],
            "status": "pending",
            "failure_reason": None,
            "reason": params.get("reason"),
            "metadata": params.get("metadata", {}),
        }
        self.refunds[refund["id"]] = refund
        self._emit("refund.created", refund)
        return refund

    def _emit(self, type_: str, obj: dict[str, Any]) -> dict[str, Any]:
        event = {
            "id": _new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(self.clock()),
            "type": type_,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "data": {"object": json.loads(json.dumps(obj))},
        }
        self.events.append(event)
        return event

    # -- faults ------------------------------------------------------------------

    def draw_fault(self, method: str, path: str, key: str | None) -> Fault | None:
        with self._lock:
            plan = self.faults
            if not any(path.startswith(prefix) for prefix in plan.paths):
                return None
            roll = self._random.random()
            if roll < plan.rate_500:
                kind = "500"
            elif roll < plan.rate_500 + plan.rate_timeout:
                kind = "timeout"
            else:
                return None
            phase = plan.phase
            if phase == "random":
                phase = self._random.choice(("before", "after"))
            fault = Fault(kind, phase, method, path, key)
            self.faults_injected.append(fault)
            return fault


_SERVER_ERROR = {
    "error": {
        "type": "api_error",
        "message": "An unknown error occurred (injected by the fake).",
    }
}


class _Handler(BaseHTTPRequestHandler):
    stripe: FakeStripe
    protocol_version = "HTTP/1.1"
    # One write per response and no Nagle delay: otherwise each request waits ~40 ms
    # for a delayed ACK between the header and body writes.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        fake = self.stripe
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        raw = split.query if method == "GET" else body
        params = decode_form(parse_qsl(raw, keep_blank_values=True))
        key = self.headers.get("Idempotency-Key")

        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            self._send(
                _Reply(
                    401,
                    {
                        "error": {
                            "type": "invalid_request_error",
                            "message": "Invalid API Key provided.",
                        }
                    },
                )
            )
            return

        fault = fake.draw_fault(method, split.path, key)
        if fault and fault.phase == "before":
            # The request is lost before the API sees it: nothing is created.
            if fault.kind == "timeout":
                time.sleep(fake.faults.timeout_delay)
            self._log(method, split.path, key, 500, fault=fault)
            self._send(_Reply(500, _SERVER_ERROR))
            return

        reply = fake.handle(method, split.path, params, key)
        replayed = bool(reply.body.pop("_replayed", False))
        if fault and fault.kind == "500":
            # The object exists and its response is stored under the key; the answer is lost.
            self._log(method, split.path, key, 500, fault=fault)
            self._send(_Reply(500, _SERVER_ERROR))
            return
        if fault:  # an "after" timeout: answer, but too late for the client
            time.sleep(fake.faults.timeout_delay)
        self._log(method, split.path, key, reply.status, replayed=replayed, fault=fault)
        self._send(reply, idempotent_replay=replayed)

    def _log(
        self,
        method: str,
        path: str,
        key: str | None,
        status: int,
        *,
        replayed: bool = False,
        fault: Fault | None = None,
    ) -> None:
        with self.stripe._lock:
            self.stripe.requests.append(RequestLog(method, path, key, status, replayed, fault))

    def _send(self, reply: _Reply, *, idempotent_replay: bool = False) -> None:
        payload = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Request-Id", _new_id("req"))
            if reply.status >= 500:
                # Tell the library its own retry would be safe (we retry ourselves).
                self.send_header("Stripe-Should-Retry", "true")
            if idempotent_replay:
                self.send_header("Idempotent-Replayed", "true")
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (timed out) before the answer came.
            pass


__all__ = ["CARDS", "FakeStripe", "Fault", "FaultPlan", "RequestLog"]
