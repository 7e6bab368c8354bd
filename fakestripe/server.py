"""Fake Stripe: a real HTTP server for the part of the Stripe API TokenByte calls, a hosted checkout
page, and correctly signed webhooks with retries, for offline development and the test suite.

No existing fake implements Checkout (localstripe has none; stripe-mock is stateless), so this is
ours. It is aiohttp (server and webhook client) and does not import Django:

    python manage.py fake_stripe --port 12111          # what `make run` starts
    python -m fakestripe.server --port 12111 --webhook-url URL --webhook-secret whsec_...

The official SDK talks to it unchanged: `stripe.StripeClient(key, base_addresses={"api": url})`.

API subset (form-encoded bodies with nested keys, `Authorization: Bearer <api key>`, answers and
errors in Stripe's JSON shapes; 401 for a wrong or missing key, 400 for bad parameters, 404
`resource_missing`; an `Idempotency-Key` replays the first 2xx answer with the same parameters and
header `Idempotent-Replayed: true`, and is a 400 `idempotency_error` with other parameters):
    POST /v1/checkout/sessions                   mode=payment with price_data line items only;
                                                 unknown parameters (payment_method_types, which
                                                 the pinned API version removed) are a 400
    GET  /v1/checkout/sessions/<id>              ?expand[]=line_items is supported
    GET  /v1/checkout/sessions/<id>/line_items
    POST /v1/checkout/sessions/<id>/expire       only an open session
    POST /v1/refunds                             payment_intent (or charge), amount, reason,
                                                 metadata
    GET  /v1/refunds                             ?payment_intent=, charge=, limit=, starting_after=
    GET  /v1/refunds/<id>

Hosted checkout page (what the customer's browser sees; works without JavaScript):
    GET  /c/pay/<id>              product, amount, email; "Pay", "Pay later (async)", "Cancel"
    POST /c/pay/<id>/pay          paid at once -> checkout.session.completed (payment_status=paid)
    POST /c/pay/<id>/pay-async    a bank debit -> checkout.session.completed (payment_status=unpaid)
    POST /c/pay/<id>/async-succeed | async-fail
                                  settle it -> checkout.session.async_payment_succeeded | _failed
Each POST answers 303 to success_url with `{CHECKOUT_SESSION_ID}` replaced by the session id.

Test controls (JSON, no API key; the same logic as the buttons; errors in Stripe's error shape):
    POST /_fake/sessions/<id>/pay | pay-async | async-succeed | async-fail | expire
                                            -> the checkout session
    GET  /_fake/sessions/<id>               -> the checkout session
    POST /_fake/payment_intents/<pi>/refund {"amount": N}   (optional; default: what is left)
                                            a refund made in Stripe's dashboard -> the refund,
                                            and charge.refunded is sent
    GET  /_fake/events[?type=T]             every event, oldest first, each with its deliveries
    POST /_fake/events/<evt>/resend         deliver that event (same id) again, once, now
    POST /_fake/reset                       forget every object, event and pending delivery
In tests, `FakeStripe` (below) offers the same as Python methods.

Webhooks: each event is POSTed as JSON to the webhook URL, signed as Stripe signs
(`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, a fresh timestamp per
attempt, the same body and event id on every attempt). Deliveries run in the background, in order
per checkout session (an event waits until the previous one of its session is delivered or given
up). A non-2xx answer, a timeout (10 s) or a connection error is retried after each of
retry_delays seconds (default 1, 5, 30, 120), then given up; every attempt is recorded. With no
webhook URL, events are recorded and not delivered.

Where the fake is looser or simpler than Stripe, on purpose:
- expires_at may be any time in the next 24 hours (Stripe demands at least 30 minutes ahead), so
  tests can watch a session expire within seconds. Sessions past expires_at expire on access and
  by a check every second, sending checkout.session.expired once.
- Only one-time `price_data` line items; `price`/`product` ids, subscriptions and setup mode are
  400s that say so. Other documented parameters are accepted and not acted upon.
- A session's `url` is null once it is no longer open, as on Stripe; its page stays reachable and
  shows the state.
- Events carry `request: {"id": null, "idempotency_key": null}`; only the events the app handles
  are sent (checkout.session.*, charge.refunded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import string
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

from fakestripe import pages
from tokenbyte.loopthread import LoopThread

logger = logging.getLogger(__name__)

DEFAULT_PORT = 12111
DEFAULT_API_KEY = "sk_test_fake"
DEFAULT_WEBHOOK_SECRET = "whsec_test_fake"
DEFAULT_RETRY_DELAYS = (1.0, 5.0, 30.0, 120.0)
DELIVERY_TIMEOUT_SECONDS = 10.0
EXPIRY_CHECK_SECONDS = 1.0
SESSION_LIFETIME_SECONDS = 24 * 60 * 60
WEBHOOK_USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
DEFAULT_CUSTOMER_EMAIL = "customer@example.com"
MAX_BODY_BYTES = 1024 * 1024
RESPONSE_EXCERPT_CHARS = 500

# POST /v1/checkout/sessions parameters documented for the API version the pinned SDK uses
# (stripe==16.1.0, 2026-10-28.endive; the SDK's SessionCreateParams is generated from the same
# OpenAPI spec). `payment_method_types` is not here: 2026-09-30.endive removed it.
CHECKOUT_SESSION_CREATE_PARAMS = frozenset(
    {
        "adaptive_pricing",
        "after_expiration",
        "allow_promotion_codes",
        "allowed_payment_method_types",
        "automatic_tax",
        "billing_address_collection",
        "branding_settings",
        "cancel_url",
        "client_reference_id",
        "consent_collection",
        "currency",
        "custom_fields",
        "custom_text",
        "customer",
        "customer_account",
        "customer_creation",
        "customer_email",
        "customer_update",
        "discounts",
        "excluded_payment_method_types",
        "expand",
        "expires_at",
        "integration_identifier",
        "invoice_creation",
        "line_items",
        "locale",
        "managed_payments",
        "metadata",
        "mode",
        "name_collection",
        "optional_items",
        "origin_context",
        "payment_intent_data",
        "payment_method_collection",
        "payment_method_configuration",
        "payment_method_data",
        "payment_method_options",
        "permissions",
        "phone_number_collection",
        "redirect_on_completion",
        "return_url",
        "saved_payment_method_options",
        "setup_intent_data",
        "shipping_address_collection",
        "shipping_options",
        "submit_type",
        "subscription_data",
        "success_url",
        "tax_id_collection",
        "ui_mode",
        "wallet_options",
    }
)
LINE_ITEM_PARAMS = frozenset(
    {"adjustable_quantity", "metadata", "price", "price_data", "quantity", "tax_rates"}
)
PRICE_DATA_PARAMS = frozenset(
    {
        "currency",
        "product",
        "product_data",
        "recurring",
        "tax_behavior",
        "unit_amount",
        "unit_amount_decimal",
    }
)
PRODUCT_DATA_PARAMS = frozenset(
    {"description", "images", "metadata", "name", "tax_code", "tax_details", "unit_label"}
)
PAYMENT_INTENT_DATA_PARAMS = frozenset(
    {
        "application_fee_amount",
        "capture_method",
        "description",
        "metadata",
        "on_behalf_of",
        "receipt_email",
        "setup_future_usage",
        "shipping",
        "statement_descriptor",
        "statement_descriptor_suffix",
        "transfer_data",
        "transfer_group",
    }
)
SESSION_RETRIEVE_PARAMS = frozenset({"expand"})
SESSION_EXPIRE_PARAMS = frozenset({"expand"})
REFUND_CREATE_PARAMS = frozenset(
    {
        "amount",
        "charge",
        "currency",
        "customer",
        "expand",
        "instructions_email",
        "metadata",
        "origin",
        "payment_intent",
        "reason",
        "refund_application_fee",
        "reverse_transfer",
    }
)
REFUND_LIST_PARAMS = frozenset(
    {"charge", "created", "ending_before", "expand", "limit", "payment_intent", "starting_after"}
)
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
# Stripe's minimum charge per currency, in the smallest unit (the common ones).
MINIMUM_AMOUNTS = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "jpy": 50}
MAXIMUM_AMOUNT = 99_999_999
SESSION_ACTIONS = ("pay", "pay-async", "async-succeed", "async-fail")
EXPIRY_TASK = "fakestripe-expiry"

_ID_ALPHABET = string.ascii_letters + string.digits
_FORM_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_FORM_SUBKEY = re.compile(r"\[([^\[\]]*)\]")


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def sign_payload(payload: str, secret: str, timestamp: int) -> str:
    """The Stripe-Signature header value for `payload`, exactly as Stripe computes it."""
    signed = f"{timestamp}.{payload}".encode()
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class FakeStripeError(Exception):
    """A Stripe API error: the status and the `{"error": {...}}` body Stripe would answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
        return {"error": error}


def _unknown(param: str) -> FakeStripeError:
    return FakeStripeError(
        400, f"Received unknown parameter: {param}", param=param, code="parameter_unknown"
    )


def _missing(param: str) -> FakeStripeError:
    return FakeStripeError(
        400, f"Missing required param: {param}.", param=param, code="parameter_missing"
    )


def _no_such(kind: str, object_id: str, param: str = "id") -> FakeStripeError:
    return FakeStripeError(
        404, f"No such {kind}: '{object_id}'", param=param, code="resource_missing"
    )


# --------------------------------------------------------------------------------------------
# Form bodies with Stripe's nested keys: line_items[0][price_data][unit_amount]=2000


def parse_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Nested keys to dicts and lists (`a[0][b]`, `a[]`); values stay strings."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        match = _FORM_KEY.match(raw_key)
        if match is None:
            raise FakeStripeError(400, f"Invalid parameter name: {raw_key}", param=raw_key)
        parts = [match.group(1), *_FORM_SUBKEY.findall(match.group(2))]
        node = root
        for depth, part in enumerate(parts):
            name = str(len(node)) if part == "" else part
            if depth == len(parts) - 1:
                if isinstance(node.get(name), dict):
                    raise FakeStripeError(400, f"Invalid hash: {raw_key}", param=raw_key)
                node[name] = value
            else:
                child = node.setdefault(name, {})
                if not isinstance(child, dict):
                    raise FakeStripeError(400, f"Invalid hash: {raw_key}", param=raw_key)
                node = child
    return {key: _listify(value, key) for key, value in root.items()}


def _listify(value: Any, name: str) -> Any:
    """Turn dicts keyed 0..n into lists, except metadata (whose keys are the caller's)."""
    if not isinstance(value, dict):
        return value
    if name != "metadata" and value and all(key.isdigit() for key in value):
        return [_listify(value[key], "") for key in sorted(value, key=int)]
    return {key: _listify(item, key) for key, item in value.items()}


def _int(value: Any, param: str, *, low: int = 0, high: int = MAXIMUM_AMOUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise FakeStripeError(400, f"Invalid integer: {value!r}", param=param)
    try:
        number = int(value)
    except ValueError as exc:
        raise FakeStripeError(400, f"Invalid integer: {value}", param=param) from exc
    if not low <= number <= high:
        raise FakeStripeError(
            400,
            f"Invalid {param}: must be between {low} and {high}",
            param=param,
            code="parameter_invalid_integer",
        )
    return number


def _dict(value: Any, param: str, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FakeStripeError(400, f"Invalid hash: {param}", param=param)
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise _unknown(f"{param}[{key}]")
    return value


def _string(value: Any, param: str, *, max_length: int = 5000) -> str:
    if not isinstance(value, str):
        raise FakeStripeError(400, f"Invalid string: {param}", param=param)
    if len(value) > max_length:
        raise FakeStripeError(
            400,
            f"Invalid string: {param} must be at most {max_length} characters",
            param=param,
            code="parameter_invalid_string_too_long",
        )
    return value


def _url(value: Any, param: str) -> str:
    url = _string(value, param, max_length=5000)
    if not url.startswith(("http://", "https://")):
        raise FakeStripeError(400, f"Not a valid URL: {param}", param=param, code="url_invalid")
    return url


def _metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    # Stripe: up to 50 keys, keys up to 40 characters, values up to 500; "" unsets a key.
    if value == "":
        return {}
    metadata = _dict(value, param)
    if len(metadata) > 50:
        raise FakeStripeError(400, "Invalid metadata: at most 50 keys", param=param)
    for key, item in metadata.items():
        if len(key) > 40:
            raise FakeStripeError(
                400, f"Invalid metadata: key {key!r} is longer than 40 characters", param=param
            )
        _string(item, f"{param}[{key}]", max_length=500)
    return {key: item for key, item in metadata.items() if item != ""}


def _expand(params: dict[str, Any], supported: frozenset[str]) -> set[str]:
    raw = params.get("expand", [])
    values = raw if isinstance(raw, list) else [raw]
    for value in values:
        if value not in supported:
            raise FakeStripeError(
                400,
                f"This property cannot be expanded ({value}) on the fake Stripe server.",
                param="expand",
            )
    return set(values)


# --------------------------------------------------------------------------------------------
# State


@dataclass
class _Session:
    obj: dict[str, Any]  # the public checkout.session object
    line_items: list[dict[str, Any]]
    payment_intent_metadata: dict[str, str]
    async_state: str | None = None  # "processing" | "succeeded" | "failed" (pay-async only)


@dataclass
class _Event:
    payload: dict[str, Any]
    body: str  # serialised once: every attempt sends the same bytes
    lane: str  # deliveries are ordered within a lane (the checkout session)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    state: str = "pending"  # pending | delivered | failed | no_endpoint

    def record(self) -> dict[str, Any]:
        return {
            "id": self.payload["id"],
            "type": self.payload["type"],
            "created": self.payload["created"],
            "delivery_state": self.state,
            "event": copy.deepcopy(self.payload),
            "deliveries": copy.deepcopy(self.deliveries),
        }


@dataclass
class _Idempotent:
    route: str
    fingerprint: str
    status: int
    body: dict[str, Any]


class FakeStripeServer:
    """The state, the aiohttp application and the webhook deliveries. Every method runs on the
    server's event loop; the state changes are synchronous, so each is atomic."""

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        webhook_url: str | None = None,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        retry_delays: Iterable[float] = DEFAULT_RETRY_DELAYS,
        api_version: str,
        delivery_timeout: float = DELIVERY_TIMEOUT_SECONDS,
        expiry_check_seconds: float = EXPIRY_CHECK_SECONDS,
        on_delivery: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.api_key = api_key  # None accepts any key
        self.webhook_url = webhook_url or None
        self.webhook_secret = webhook_secret
        self.retry_delays = tuple(float(delay) for delay in retry_delays)
        self.api_version = api_version
        self.delivery_timeout = delivery_timeout
        self.expiry_check_seconds = expiry_check_seconds
        self.on_delivery = on_delivery
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clear()

    def _clear(self) -> None:
        self._sessions: dict[str, _Session] = {}
        self._charges: dict[str, dict[str, Any]] = {}  # by payment intent id
        self._charge_lanes: dict[str, str] = {}  # payment intent id -> session id
        self._refunds: dict[str, dict[str, Any]] = {}
        self._events: list[_Event] = []
        self._events_by_id: dict[str, _Event] = {}
        self._idempotency: dict[str, _Idempotent] = {}
        self._lanes: dict[str, deque[_Event]] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # lifecycle

    async def start(self, host: str, port: int) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        self._client = aiohttp.ClientSession(
            headers={"User-Agent": WEBHOOK_USER_AGENT}, raise_for_status=False
        )
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError:
            await self.close()
            raise
        self.host = host
        self.port = self._runner.addresses[0][1]
        self._spawn(self._expire_due_sessions_forever(), name=EXPIRY_TASK)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    def reset(self) -> None:
        for task in list(self._tasks):
            if task.get_name() != EXPIRY_TASK:
                task.cancel()
        self._clear()

    def _spawn(self, coro: Any, name: str | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # checkout sessions

    def session_create(self, params: dict[str, Any], *, base_url: str) -> dict[str, Any]:
        for key in params:
            if key not in CHECKOUT_SESSION_CREATE_PARAMS:
                raise _unknown(key)
        now = int(time.time())
        mode = params.get("mode")
        if mode is None:
            raise _missing("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise FakeStripeError(
                400,
                "Invalid mode: must be one of payment, setup, or subscription",
                param="mode",
                code="parameter_invalid_string",
            )
        if mode != "payment":
            raise FakeStripeError(
                400, "The fake Stripe server supports only mode=payment.", param="mode"
            )
        for required in ("success_url", "cancel_url", "line_items"):
            if required not in params:
                raise _missing(required)
        success_url = _url(params["success_url"], "success_url")
        cancel_url = _url(params["cancel_url"], "cancel_url")
        line_items, currency = self._line_items(params["line_items"])
        if "currency" in params and params["currency"] != currency:
            raise FakeStripeError(
                400, "currency must match the line items' currency", param="currency"
            )
        total = sum(item["amount_total"] for item in line_items)
        minimum = MINIMUM_AMOUNTS.get(currency, 0)
        if total < minimum:
            raise FakeStripeError(
                400,
                "The Checkout Session's total amount due must add up to at least "
                f"{pages.format_amount(minimum, currency)} {currency}",
                param="line_items",
                code="amount_too_small",
            )
        if total > MAXIMUM_AMOUNT:
            raise FakeStripeError(
                400, "The total amount is too large.", param="line_items", code="amount_too_large"
            )
        metadata = _metadata(params.get("metadata", {}))
        intent_data = _dict(
            params.get("payment_intent_data", {}),
            "payment_intent_data",
            PAYMENT_INTENT_DATA_PARAMS,
        )
        intent_metadata = _metadata(
            intent_data.get("metadata", {}), "payment_intent_data[metadata]"
        )
        client_reference_id = params.get("client_reference_id")
        if client_reference_id is not None:
            _string(client_reference_id, "client_reference_id", max_length=200)
        customer_email = params.get("customer_email")
        if customer_email is not None and "@" not in _string(customer_email, "customer_email"):
            raise FakeStripeError(
                400,
                f"Invalid email address: {customer_email}",
                param="customer_email",
                code="email_invalid",
            )
        expires_at = now + SESSION_LIFETIME_SECONDS
        if "expires_at" in params:
            expires_at = _int(params["expires_at"], "expires_at", high=2**40)
            if expires_at <= now:
                raise FakeStripeError(
                    400,
                    "The `expires_at` timestamp must be in the future "
                    "(Stripe demands at least 30 minutes; the fake accepts less for tests).",
                    param="expires_at",
                )
            if expires_at > now + SESSION_LIFETIME_SECONDS:
                raise FakeStripeError(
                    400,
                    "The `expires_at` timestamp must be less than 24 hours from Checkout "
                    "Session creation.",
                    param="expires_at",
                )
        expand = _expand(params, frozenset({"line_items"}))
        session_id = new_id("cs_test_", 58)
        obj = {
            "id": session_id,
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": total,
            "amount_total": total,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None,
            "cancel_url": cancel_url,
            "client_reference_id": client_reference_id,
            "client_secret": None,
            "consent": None,
            "consent_collection": None,
            "created": now,
            "currency": currency,
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
            "customer": params.get("customer"),
            "customer_creation": None if params.get("customer") else "if_required",
            "customer_details": None,
            "customer_email": customer_email,
            "expires_at": expires_at,
            "invoice": None,
            "invoice_creation": None,
            "livemode": False,
            "locale": params.get("locale"),
            "metadata": metadata,
            "mode": "payment",
            "payment_intent": None,
            "payment_link": None,
            "payment_method_collection": "if_required",
            "payment_method_options": {},
            "payment_method_types": ["card", "link"],
            "payment_status": "unpaid",
            "phone_number_collection": {"enabled": False},
            "recovered_from": None,
            "setup_intent": None,
            "shipping_address_collection": None,
            "shipping_cost": None,
            "shipping_options": [],
            "status": "open",
            "submit_type": params.get("submit_type"),
            "subscription": None,
            "success_url": success_url,
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": f"{base_url}/c/pay/{session_id}",
        }
        session = _Session(obj, line_items, intent_metadata)
        self._sessions[session_id] = session
        return self._session_view(session, expand)

    def _line_items(self, raw: Any) -> tuple[list[dict[str, Any]], str]:
        if not isinstance(raw, list) or not raw:
            raise FakeStripeError(400, "line_items must be a non-empty list", param="line_items")
        items: list[dict[str, Any]] = []
        currency: str | None = None
        for index, entry in enumerate(raw):
            prefix = f"line_items[{index}]"
            line = _dict(entry, prefix, LINE_ITEM_PARAMS)
            if "price" in line:
                raise FakeStripeError(
                    404,
                    f"No such price: '{line['price']}' (the fake Stripe server supports "
                    "price_data only)",
                    param=f"{prefix}[price]",
                    code="resource_missing",
                )
            if "price_data" not in line:
                raise _missing(f"{prefix}[price_data]")
            if "quantity" not in line:
                raise _missing(f"{prefix}[quantity]")
            quantity = _int(line["quantity"], f"{prefix}[quantity]", low=1, high=999_999)
            price_data = _dict(line["price_data"], f"{prefix}[price_data]", PRICE_DATA_PARAMS)
            if "recurring" in price_data:
                raise FakeStripeError(
                    400,
                    "Recurring prices need mode=subscription, which the fake does not support.",
                    param=f"{prefix}[price_data][recurring]",
                )
            if "product" in price_data:
                raise FakeStripeError(
                    404,
                    f"No such product: '{price_data['product']}' (the fake Stripe server "
                    "supports product_data only)",
                    param=f"{prefix}[price_data][product]",
                    code="resource_missing",
                )
            if "currency" not in price_data:
                raise _missing(f"{prefix}[price_data][currency]")
            line_currency = _string(price_data["currency"], f"{prefix}[price_data][currency]")
            if not re.fullmatch(r"[a-z]{3}", line_currency):
                raise FakeStripeError(
                    400,
                    f"Invalid currency: {line_currency}",
                    param=f"{prefix}[price_data][currency]",
                )
            if currency is not None and line_currency != currency:
                raise FakeStripeError(
                    400,
                    "All line items must use the same currency.",
                    param=f"{prefix}[price_data][currency]",
                )
            currency = line_currency
            unit_amount = self._unit_amount(price_data, f"{prefix}[price_data]")
            if "product_data" not in price_data:
                raise _missing(f"{prefix}[price_data][product_data]")
            product = _dict(
                price_data["product_data"],
                f"{prefix}[price_data][product_data]",
                PRODUCT_DATA_PARAMS,
            )
            if "name" not in product:
                raise _missing(f"{prefix}[price_data][product_data][name]")
            name = _string(product["name"], f"{prefix}[price_data][product_data][name]")
            items.append(
                {
                    "id": new_id("li_"),
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": unit_amount * quantity,
                    "amount_tax": 0,
                    "amount_total": unit_amount * quantity,
                    "currency": line_currency,
                    "description": name,
                    "price": {
                        "id": new_id("price_"),
                        "object": "price",
                        "active": False,
                        "currency": line_currency,
                        "livemode": False,
                        "metadata": {},
                        "product": new_id("prod_"),
                        "recurring": None,
                        "type": "one_time",
                        "unit_amount": unit_amount,
                        "unit_amount_decimal": str(unit_amount),
                    },
                    "quantity": quantity,
                }
            )
        assert currency is not None
        return items, currency

    def _unit_amount(self, price_data: dict[str, Any], prefix: str) -> int:
        if "unit_amount" in price_data:
            return _int(price_data["unit_amount"], f"{prefix}[unit_amount]")
        if "unit_amount_decimal" in price_data:
            param = f"{prefix}[unit_amount_decimal]"
            try:
                amount = Decimal(_string(price_data["unit_amount_decimal"], param))
            except InvalidOperation as exc:
                raise FakeStripeError(400, "Invalid decimal", param=param) from exc
            if amount != amount.to_integral_value() or amount < 0:
                raise FakeStripeError(
                    400, "The fake Stripe server needs whole unit amounts.", param=param
                )
            return int(amount)
        raise _missing(f"{prefix}[unit_amount]")

    def _session(self, session_id: str, param: str = "session") -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise _no_such("checkout.session", session_id, param)
        self._expire_if_due(session)
        return session

    def _session_view(self, session: _Session, expand: set[str] | None = None) -> dict[str, Any]:
        view = copy.deepcopy(session.obj)
        if expand and "line_items" in expand:
            view["line_items"] = self._line_item_list(session)
        return view

    def _line_item_list(self, session: _Session) -> dict[str, Any]:
        return {
            "object": "list",
            "data": copy.deepcopy(session.line_items),
            "has_more": False,
            "url": f"/v1/checkout/sessions/{session.obj['id']}/line_items",
        }

    def session_get(self, session_id: str, expand: set[str] | None = None) -> dict[str, Any]:
        return self._session_view(self._session(session_id), expand)

    def session_page(self, session_id: str) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
        session = self._session(session_id)
        return copy.deepcopy(session.obj), copy.deepcopy(session.line_items), session.async_state

    def session_line_items(self, session_id: str) -> dict[str, Any]:
        return self._line_item_list(self._session(session_id))

    def _require_open(self, session: _Session, action: str) -> None:
        status = session.obj["status"]
        if status != "open":
            raise FakeStripeError(
                400,
                f"Cannot {action} checkout session {session.obj['id']}: its status is "
                f"{status}, not open.",
                code="checkout_session_not_open",
            )

    def session_pay(self, session_id: str, *, email: str | None = None) -> dict[str, Any]:
        session = self._session(session_id)
        self._require_open(session, "pay")
        self._complete(session, email)
        session.obj["payment_status"] = "paid"
        self._charge(session)
        self._emit("checkout.session.completed", session.obj, lane=session_id)
        return self._session_view(session)

    def session_pay_async(self, session_id: str, *, email: str | None = None) -> dict[str, Any]:
        session = self._session(session_id)
        self._require_open(session, "pay")
        self._complete(session, email)
        session.async_state = "processing"
        self._emit("checkout.session.completed", session.obj, lane=session_id)
        return self._session_view(session)

    def _complete(self, session: _Session, email: str | None) -> None:
        obj = session.obj
        email = obj["customer_email"] or email or DEFAULT_CUSTOMER_EMAIL
        obj["status"] = "complete"
        obj["url"] = None
        obj["payment_intent"] = new_id("pi_")
        obj["customer_details"] = {
            "address": None,
            "email": email,
            "name": None,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        }

    def _settle_async(self, session_id: str, *, succeed: bool) -> dict[str, Any]:
        session = self._session(session_id)
        if session.async_state != "processing":
            raise FakeStripeError(
                400,
                f"Checkout session {session_id} has no asynchronous payment in processing.",
                code="payment_intent_unexpected_state",
            )
        if succeed:
            session.async_state = "succeeded"
            session.obj["payment_status"] = "paid"
            self._charge(session)
            kind = "checkout.session.async_payment_succeeded"
        else:
            session.async_state = "failed"
            kind = "checkout.session.async_payment_failed"
        self._emit(kind, session.obj, lane=session_id)
        return self._session_view(session)

    def session_async_succeed(self, session_id: str) -> dict[str, Any]:
        return self._settle_async(session_id, succeed=True)

    def session_async_fail(self, session_id: str) -> dict[str, Any]:
        return self._settle_async(session_id, succeed=False)

    def session_expire(self, session_id: str) -> dict[str, Any]:
        session = self._session(session_id)
        self._require_open(session, "expire")
        self._expire(session)
        return self._session_view(session)

    def _expire(self, session: _Session) -> None:
        session.obj["status"] = "expired"
        session.obj["url"] = None
        self._emit("checkout.session.expired", session.obj, lane=session.obj["id"])

    def _expire_if_due(self, session: _Session) -> None:
        if session.obj["status"] == "open" and session.obj["expires_at"] <= time.time():
            self._expire(session)

    async def _expire_due_sessions_forever(self) -> None:
        while True:
            await asyncio.sleep(self.expiry_check_seconds)
            for session in list(self._sessions.values()):
                self._expire_if_due(session)

    # charges and refunds

    def _charge(self, session: _Session) -> None:
        obj = session.obj
        payment_intent = obj["payment_intent"]
        charge_id = new_id("ch_")
        self._charges[payment_intent] = {
            "id": charge_id,
            "object": "charge",
            "amount": obj["amount_total"],
            "amount_captured": obj["amount_total"],
            "amount_refunded": 0,
            "balance_transaction": None,
            "billing_details": {
                "address": None,
                "email": obj["customer_details"]["email"],
                "name": None,
                "phone": None,
            },
            "captured": True,
            "created": int(time.time()),
            "currency": obj["currency"],
            "customer": obj["customer"],
            "description": None,
            "disputed": False,
            "failure_code": None,
            "failure_message": None,
            "livemode": False,
            "metadata": dict(session.payment_intent_metadata or obj["metadata"]),
            "paid": True,
            "payment_intent": payment_intent,
            "payment_method": new_id("pm_"),
            "receipt_email": obj["customer_details"]["email"],
            "receipt_url": None,
            "refunded": False,
            "refunds": {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": f"/v1/charges/{charge_id}/refunds",
            },
            "status": "succeeded",
        }
        self._charge_lanes[payment_intent] = obj["id"]

    def refund_create(self, params: dict[str, Any]) -> dict[str, Any]:
        for key in params:
            if key not in REFUND_CREATE_PARAMS:
                raise _unknown(key)
        payment_intent = params.get("payment_intent")
        charge_id = params.get("charge")
        if payment_intent is None and charge_id is None:
            raise _missing("payment_intent")
        if payment_intent is not None:
            charge = self._charge_for(_string(payment_intent, "payment_intent"))
        else:
            charge = next(
                (item for item in self._charges.values() if item["id"] == charge_id), None
            )
            if charge is None:
                raise _no_such("charge", str(charge_id), "charge")
        amount = None
        if "amount" in params:
            amount = _int(params["amount"], "amount", low=1)
        reason = params.get("reason")
        if reason is not None and reason not in REFUND_REASONS:
            raise FakeStripeError(
                400,
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                param="reason",
            )
        metadata = _metadata(params.get("metadata", {}))
        _expand(params, frozenset())
        return self._refund(charge, amount, reason=reason, metadata=metadata)

    def refund_from_dashboard(self, payment_intent: str, amount: int | None) -> dict[str, Any]:
        charge = self._charge_for(payment_intent)
        if amount is not None:
            amount = _int(amount, "amount", low=1)
        return self._refund(charge, amount, reason="requested_by_customer", metadata={})

    def _charge_for(self, payment_intent: str) -> dict[str, Any]:
        charge = self._charges.get(payment_intent)
        if charge is not None:
            return charge
        if any(s.obj["payment_intent"] == payment_intent for s in self._sessions.values()):
            raise FakeStripeError(
                400,
                f"PaymentIntent {payment_intent} does not have a successful charge to refund.",
                param="payment_intent",
                code="charge_not_refundable",
            )
        raise _no_such("payment_intent", payment_intent, "payment_intent")

    def _refund(
        self,
        charge: dict[str, Any],
        amount: int | None,
        *,
        reason: str | None,
        metadata: dict[str, str],
    ) -> dict[str, Any]:
        left = charge["amount"] - charge["amount_refunded"]
        if left == 0:
            raise FakeStripeError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        if amount is None:
            amount = left
        if amount > left:
            currency = charge["currency"]
            raise FakeStripeError(
                400,
                f"Refund amount ({pages.format_amount(amount, currency)}) is greater than "
                f"unrefunded amount on charge ({pages.format_amount(left, currency)})",
                param="amount",
                code="amount_too_large",
            )
        refund = {
            "id": new_id("re_"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": None,
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "destination_details": None,
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        self._refunds[refund["id"]] = refund
        previous = {
            "amount_refunded": charge["amount_refunded"],
            "refunded": charge["refunded"],
        }
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        refunds = charge["refunds"]
        refunds["data"].insert(0, copy.deepcopy(refund))  # newest first, as Stripe lists
        refunds["total_count"] = len(refunds["data"])
        if charge["refunded"] == previous["refunded"]:
            del previous["refunded"]
        self._emit(
            "charge.refunded",
            charge,
            lane=self._charge_lanes[charge["payment_intent"]],
            previous_attributes=previous,
        )
        return copy.deepcopy(refund)

    def refund_list(self, params: dict[str, Any]) -> dict[str, Any]:
        """Newest first, as Stripe lists; filters payment_intent and charge, pages with limit
        and starting_after."""
        for key in params:
            if key not in REFUND_LIST_PARAMS:
                raise _unknown(key)
        _expand(params, frozenset())
        limit = _int(params.get("limit", 10), "limit", low=1, high=100)
        refunds = [
            refund
            for refund in reversed(self._refunds.values())
            if params.get("payment_intent", refund["payment_intent"]) == refund["payment_intent"]
            and params.get("charge", refund["charge"]) == refund["charge"]
        ]
        after = params.get("starting_after")
        if after is not None:
            ids = [refund["id"] for refund in refunds]
            if after not in ids:
                raise _no_such("refund", str(after), "starting_after")
            refunds = refunds[ids.index(after) + 1 :]
        return {
            "object": "list",
            "data": copy.deepcopy(refunds[:limit]),
            "has_more": len(refunds) > limit,
            "url": "/v1/refunds",
        }

    def refund_get(self, refund_id: str) -> dict[str, Any]:
        refund = self._refunds.get(refund_id)
        if refund is None:
            raise _no_such("refund", refund_id)
        return copy.deepcopy(refund)

    # idempotency

    def idempotent_replay(
        self, scope: str, key: str, route: str, params: dict[str, Any]
    ) -> _Idempotent | None:
        """The stored answer for this key, None if the key is new; a 400 if it was used with
        other parameters or another endpoint."""
        stored = self._idempotency.get(f"{scope}\0{key}")
        if stored is None:
            return None
        if stored.route != route or stored.fingerprint != _fingerprint(params):
            raise FakeStripeError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type="idempotency_error",
            )
        return stored

    def idempotent_store(
        self,
        scope: str,
        key: str,
        route: str,
        params: dict[str, Any],
        status: int,
        body: dict[str, Any],
    ) -> None:
        self._idempotency[f"{scope}\0{key}"] = _Idempotent(
            route, _fingerprint(params), status, copy.deepcopy(body)
        )

    # events and webhook deliveries

    def _emit(
        self,
        kind: str,
        obj: dict[str, Any],
        *,
        lane: str,
        previous_attributes: dict[str, Any] | None = None,
    ) -> None:
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous_attributes:
            data["previous_attributes"] = previous_attributes
        payload = {
            "id": new_id("evt_"),
            "object": "event",
            "api_version": self.api_version,
            "created": int(time.time()),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }
        event = _Event(payload, json.dumps(payload, indent=2), lane)
        self._events.append(event)
        self._events_by_id[payload["id"]] = event
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque([event])
            self._spawn(self._drain(lane, queue))
        else:
            queue.append(event)

    async def _drain(self, lane: str, queue: deque[_Event]) -> None:
        try:
            while queue:
                await self._deliver(queue[0])
                queue.popleft()
        finally:
            if self._lanes.get(lane) is queue:
                del self._lanes[lane]

    async def _deliver(self, event: _Event) -> None:
        if self.webhook_url is None:
            event.state = "no_endpoint"
            return
        delays = self.retry_delays
        for attempt, delay in enumerate((0.0, *delays)):
            if delay:
                await asyncio.sleep(delay)
            if await self._attempt(event, resend=False, final=attempt == len(delays)):
                event.state = "delivered"
                return
        event.state = "failed"

    async def _attempt(self, event: _Event, *, resend: bool, final: bool) -> bool:
        url = self.webhook_url
        if url is None or self._client is None:
            return False
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign_payload(event.body, self.webhook_secret, timestamp),
            "Cache-Control": "no-cache",
            "Accept": "*/*; q=0.5, application/xml",
        }
        record: dict[str, Any] = {
            "event_id": event.payload["id"],
            "event_type": event.payload["type"],
            "attempt": len(event.deliveries) + 1,
            "resend": resend,
            "url": url,
            "started_at": time.time(),
            "finished_at": None,
            "status": None,
            "error": None,
            "response": None,
            "ok": False,
            "gave_up": False,
        }
        try:
            async with self._client.post(
                url,
                data=event.body.encode(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.delivery_timeout),
            ) as response:
                text = await response.text(errors="replace")
                record["status"] = response.status
                record["response"] = text[:RESPONSE_EXCERPT_CHARS]
                record["ok"] = 200 <= response.status < 300
        except TimeoutError:
            record["error"] = f"timed out after {self.delivery_timeout:g} s"
        except (aiohttp.ClientError, ValueError) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["finished_at"] = time.time()
        record["gave_up"] = not record["ok"] and final and not resend
        event.deliveries.append(record)
        if self.on_delivery is not None:
            self.on_delivery(copy.deepcopy(record))
        return record["ok"]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            event.record()
            for event in self._events
            if kind is None or event.payload["type"] == kind
        ]

    def deliveries(self, kind: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(delivery)
            for event in self._events
            if event.payload["type"] == kind
            for delivery in event.deliveries
        ]

    def resend(self, event_id: str) -> None:
        event = self._events_by_id.get(event_id)
        if event is None:
            raise _no_such("event", event_id)
        self._spawn(self._resend(event))

    async def _resend(self, event: _Event) -> None:
        if await self._attempt(event, resend=True, final=True):
            event.state = "delivered"

    # HTTP

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        api = self._api
        app.router.add_post("/v1/checkout/sessions", api(self._h_session_create))
        app.router.add_get("/v1/checkout/sessions/{id}", api(self._h_session_get))
        app.router.add_get("/v1/checkout/sessions/{id}/line_items", api(self._h_line_items))
        app.router.add_post("/v1/checkout/sessions/{id}/expire", api(self._h_session_expire))
        app.router.add_post("/v1/refunds", api(self._h_refund_create))
        app.router.add_get("/v1/refunds", api(self._h_refund_list))
        app.router.add_get("/v1/refunds/{id}", api(self._h_refund_get))
        app.router.add_route("*", "/v1/{tail:.*}", api(self._h_unknown))
        app.router.add_get("/c/pay/{id}", self._h_page)
        app.router.add_post("/c/pay/{id}/{action}", self._h_page_action)
        app.router.add_get("/_fake/sessions/{id}", self._h_fake_session)
        app.router.add_post("/_fake/sessions/{id}/{action}", self._h_fake_session_action)
        app.router.add_post("/_fake/payment_intents/{id}/refund", self._h_fake_refund)
        app.router.add_get("/_fake/events", self._h_fake_events)
        app.router.add_post("/_fake/events/{id}/resend", self._h_fake_resend)
        app.router.add_post("/_fake/reset", self._h_fake_reset)
        app.router.add_get("/", self._h_root)
        return app

    def _api(
        self, handler: Callable[[web.Request, dict[str, Any]], dict[str, Any]]
    ) -> Callable[[web.Request], Any]:
        """Authentication, form parsing, idempotency and error answers around an API handler."""

        async def wrapped(request: web.Request) -> web.Response:
            headers = {
                "Request-Id": new_id("req_", 14),
                "Stripe-Version": request.headers.get("Stripe-Version", self.api_version),
            }
            key = request.headers.get("Idempotency-Key")
            try:
                api_key = self._authenticate(request)
                if request.method == "POST":
                    body = await request.read()
                    pairs = parse_qsl(
                        body.decode("utf-8", "replace"),
                        keep_blank_values=True,
                        strict_parsing=False,
                    )
                else:
                    pairs = list(request.query.items())
                params = parse_form(pairs)
                if request.method == "POST" and key:
                    headers["Idempotency-Key"] = key
                    route = f"{request.method} {request.path}"
                    stored = self.idempotent_replay(api_key, key, route, params)
                    if stored is not None:
                        headers["Idempotent-Replayed"] = "true"
                        return web.json_response(stored.body, status=stored.status, headers=headers)
                    result = handler(request, params)
                    self.idempotent_store(api_key, key, route, params, 200, result)
                else:
                    result = handler(request, params)
            except FakeStripeError as exc:
                return web.json_response(exc.body(), status=exc.status, headers=headers)
            return web.json_response(result, headers=headers)

        return wrapped

    def _authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        supplied = credential.strip() if scheme.lower() == "bearer" else ""
        if not supplied:
            raise FakeStripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        if self.api_key is not None and not hmac.compare_digest(supplied, self.api_key):
            raise FakeStripeError(
                401, f"Invalid API Key provided: {_mask(supplied)}", code="api_key_invalid"
            )
        return supplied

    def _h_session_create(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        return self.session_create(params, base_url=f"{request.scheme}://{request.host}")

    def _h_session_get(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        for key in params:
            if key not in SESSION_RETRIEVE_PARAMS:
                raise _unknown(key)
        return self.session_get(
            request.match_info["id"], _expand(params, frozenset({"line_items"}))
        )

    def _h_line_items(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        return self.session_line_items(request.match_info["id"])

    def _h_session_expire(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        for key in params:
            if key not in SESSION_EXPIRE_PARAMS:
                raise _unknown(key)
        _expand(params, frozenset())
        return self.session_expire(request.match_info["id"])

    def _h_refund_create(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        return self.refund_create(params)

    def _h_refund_list(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        return self.refund_list(params)

    def _h_refund_get(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        return self.refund_get(request.match_info["id"])

    def _h_unknown(self, request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
        raise FakeStripeError(
            404,
            f"Unrecognized request URL ({request.method}: {request.path}). The fake Stripe "
            "server implements only the endpoints listed in fakestripe/server.py.",
        )

    # the hosted page

    async def _h_page(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        try:
            session, line_items, async_state = self.session_page(session_id)
        except FakeStripeError:
            return _html(pages.missing_page(session_id), status=404)
        return _html(pages.checkout_page(session, line_items, async_state=async_state))

    async def _h_page_action(self, request: web.Request) -> web.StreamResponse:
        session_id = request.match_info["id"]
        action = request.match_info["action"]
        if action not in SESSION_ACTIONS:
            raise web.HTTPNotFound()
        form = await request.post()
        email = form.get("email")
        try:
            session = self._session_action(
                session_id, action, email=email if isinstance(email, str) and email else None
            )
        except FakeStripeError as exc:
            if exc.status == 404:
                return _html(pages.missing_page(session_id), status=404)
            current, line_items, async_state = self.session_page(session_id)
            page = pages.checkout_page(
                current, line_items, async_state=async_state, notice=exc.message
            )
            return _html(page, status=409)
        raise web.HTTPSeeOther(pages.fill_session_id(session["success_url"], session_id))

    def _session_action(
        self, session_id: str, action: str, *, email: str | None = None
    ) -> dict[str, Any]:
        if action == "pay":
            return self.session_pay(session_id, email=email)
        if action == "pay-async":
            return self.session_pay_async(session_id, email=email)
        if action == "async-succeed":
            return self.session_async_succeed(session_id)
        if action == "async-fail":
            return self.session_async_fail(session_id)
        if action == "expire":
            return self.session_expire(session_id)
        raise FakeStripeError(404, f"Unknown action: {action}")

    # test controls

    async def _h_fake_session(self, request: web.Request) -> web.Response:
        return _control(lambda: self.session_get(request.match_info["id"]))

    async def _h_fake_session_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in (*SESSION_ACTIONS, "expire"):
            raise web.HTTPNotFound()
        return _control(lambda: self._session_action(request.match_info["id"], action))

    async def _h_fake_refund(self, request: web.Request) -> web.Response:
        payment_intent = request.match_info["id"]
        body = await request.read()
        amount: Any = None
        if body.strip():
            try:
                if request.content_type == "application/json":
                    amount = json.loads(body).get("amount")
                else:
                    amount = dict(parse_qsl(body.decode())).get("amount")
            except (ValueError, AttributeError):
                return web.json_response(
                    FakeStripeError(400, 'Send a JSON object: {"amount": N}').body(), status=400
                )
        return _control(lambda: self.refund_from_dashboard(payment_intent, amount))

    async def _h_fake_events(self, request: web.Request) -> web.Response:
        kind = request.query.get("type")
        return web.json_response({"object": "list", "data": self.events(kind)})

    async def _h_fake_resend(self, request: web.Request) -> web.Response:
        event_id = request.match_info["id"]

        def resend() -> dict[str, Any]:
            self.resend(event_id)
            return {"id": event_id, "resending": True}

        return _control(resend, status=202)

    async def _h_fake_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def _h_root(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "fake_stripe": True,
                "api_version": self.api_version,
                "webhook_url": self.webhook_url,
                "docs": "see the docstring of fakestripe/server.py",
            }
        )


def _fingerprint(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def _mask(key: str) -> str:
    return f"{key[:8]}{'*' * 4}{key[-4:]}" if len(key) > 12 else "*" * len(key)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


def _control(fn: Callable[[], dict[str, Any]], status: int = 200) -> web.Response:
    try:
        return web.json_response(fn(), status=status)
    except FakeStripeError as exc:
        return web.json_response(exc.body(), status=exc.status)


# --------------------------------------------------------------------------------------------
# Foreground server (the management command and python -m fakestripe.server)


def describe_delivery(record: dict[str, Any]) -> str:
    outcome = f"HTTP {record['status']}" if record["status"] is not None else record["error"]
    kind = "resend" if record["resend"] else f"attempt {record['attempt']}"
    tail = ", giving up" if record["gave_up"] else ""
    return f"webhook {record['event_type']} {record['event_id']} {kind}: {outcome}{tail}"


def run(
    host: str,
    port: int,
    *,
    api_key: str,
    webhook_url: str | None,
    webhook_secret: str,
    retry_delays: Iterable[float],
    api_version: str,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM; both end it cleanly. Raises OSError when
    the address cannot be bound."""

    def on_delivery(record: dict[str, Any]) -> None:
        if announce is not None:
            announce(describe_delivery(record))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        server = FakeStripeServer(
            api_key=api_key,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            retry_delays=retry_delays,
            api_version=api_version,
            on_delivery=on_delivery,
        )
        try:
            await server.start(host, port)
            if announce is not None:
                announce(
                    f"Fake Stripe listening on {server.url} (API version {api_version}, key "
                    f"{_mask(api_key)}); webhooks to {webhook_url or 'nowhere'}; Ctrl-C to stop."
                )
            await stop.wait()
        finally:
            await server.close()
            for signum in signals:
                loop.remove_signal_handler(signum)

    asyncio.run(main())


def describe_os_error(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def parse_retry_delays(value: str) -> tuple[float, ...]:
    """ "1,5,30,120" -> (1.0, 5.0, 30.0, 120.0); "" -> no retries."""
    delays = []
    for part in value.split(","):
        if not part.strip():
            continue
        try:
            delay = float(part)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {part.strip()!r}") from exc
        if not 0 <= delay <= 24 * 60 * 60:
            raise argparse.ArgumentTypeError(f"must be between 0 and 86400 seconds: {delay:g}")
        delays.append(delay)
    return tuple(delays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fakestripe.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--webhook-url", default="")
    parser.add_argument("--webhook-secret", default=DEFAULT_WEBHOOK_SECRET)
    parser.add_argument("--retry-delays", type=parse_retry_delays, default="1,5,30,120")
    parser.add_argument("--api-version", default=None, help="default: the installed SDK's")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    try:
        run(
            args.host,
            args.port,
            api_key=args.api_key,
            webhook_url=args.webhook_url or None,
            webhook_secret=args.webhook_secret,
            retry_delays=args.retry_delays,
            api_version=args.api_version or _sdk_api_version(),
            announce=lambda line: print(line, flush=True),
        )
    except OSError as exc:
        parser.exit(
            1, f"error: cannot listen on {args.host}:{args.port}: {describe_os_error(exc)}\n"
        )
    return 0


def _sdk_api_version() -> str:
    import stripe  # only when no version is given: the server itself needs no SDK

    return stripe.api_version


# --------------------------------------------------------------------------------------------
# Tests: the server on a background thread


class FakeStripe(LoopThread):
    """A fake Stripe on a free loopback port, served from a daemon thread, for tests.

    with FakeStripe(webhook_url=receiver_url, retry_delays=[0.1]) as fake:
        client = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url})
        session = client.v1.checkout.sessions.create(params={...})
        fake.pay(session.id)
        [delivery] = fake.wait_for_deliveries("checkout.session.completed")

    Every method runs on the server's loop, so it is safe from any thread. Errors are
    FakeStripeError (status, message, code, param) as the API would answer them.
    """

    thread_name = "fake-stripe"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = DEFAULT_API_KEY,
        webhook_url: str | None = None,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        retry_delays: Iterable[float] = DEFAULT_RETRY_DELAYS,
        api_version: str | None = None,
        delivery_timeout: float = DELIVERY_TIMEOUT_SECONDS,
        expiry_check_seconds: float = EXPIRY_CHECK_SECONDS,
    ) -> None:
        self.server = FakeStripeServer(
            api_key=api_key,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            retry_delays=retry_delays,
            api_version=api_version or _sdk_api_version(),
            delivery_timeout=delivery_timeout,
            expiry_check_seconds=expiry_check_seconds,
        )
        super().__init__(self.server, host=host, port=port)

    # addresses and settings (read per request or delivery, so they can change while running)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        """The API base address for the SDK: http://127.0.0.1:PORT"""
        return f"http://{self.host}:{self.port}"

    @property
    def api_key(self) -> str | None:
        return self.server.api_key

    @property
    def webhook_url(self) -> str | None:
        return self.server.webhook_url

    @webhook_url.setter
    def webhook_url(self, value: str | None) -> None:
        self.server.webhook_url = value or None

    @property
    def webhook_secret(self) -> str:
        return self.server.webhook_secret

    @webhook_secret.setter
    def webhook_secret(self, value: str) -> None:
        self.server.webhook_secret = value

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return self.server.retry_delays

    @retry_delays.setter
    def retry_delays(self, value: Iterable[float]) -> None:
        self.server.retry_delays = tuple(float(delay) for delay in value)

    @property
    def delivery_timeout(self) -> float:
        return self.server.delivery_timeout

    @delivery_timeout.setter
    def delivery_timeout(self, value: float) -> None:
        self.server.delivery_timeout = float(value)

    # the controls

    def session(self, session_id: str) -> dict[str, Any]:
        return self.call(self.server.session_get, session_id)

    def pay(self, session_id: str) -> dict[str, Any]:
        return self.call(self.server.session_pay, session_id)

    def pay_async(self, session_id: str) -> dict[str, Any]:
        return self.call(self.server.session_pay_async, session_id)

    def async_succeed(self, session_id: str) -> dict[str, Any]:
        return self.call(self.server.session_async_succeed, session_id)

    def async_fail(self, session_id: str) -> dict[str, Any]:
        return self.call(self.server.session_async_fail, session_id)

    def expire(self, session_id: str) -> dict[str, Any]:
        return self.call(self.server.session_expire, session_id)

    def refund(self, payment_intent: str, amount: int | None = None) -> dict[str, Any]:
        """A refund made in Stripe's dashboard: no API call, charge.refunded is sent."""
        return self.call(self.server.refund_from_dashboard, payment_intent, amount)

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """Every event (oldest first): id, type, created, delivery_state, event (the payload as
        delivered), deliveries (attempt, resend, url, started_at, finished_at, status, error,
        response, ok, gave_up)."""
        return self.call(self.server.events, type)

    def resend(self, event_id: str) -> None:
        """Deliver the event (same id, same body, a fresh signature) again, once, now."""
        self.call(self.server.resend, event_id)

    def reset(self) -> None:
        self.call(self.server.reset)

    def wait_for_deliveries(
        self, event_type: str, count: int = 1, timeout: float = 10
    ) -> list[dict[str, Any]]:
        """Wait until events of this type have `count` finished delivery attempts in all
        (whatever their outcome); return every finished attempt, oldest first."""
        deadline = time.monotonic() + timeout
        while True:
            deliveries = self.call(self.server.deliveries, event_type)
            if len(deliveries) >= count:
                return deliveries
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(deliveries)} of {count} {event_type} deliveries within {timeout:g} s"
                )
            time.sleep(0.02)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
