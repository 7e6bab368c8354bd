"""The fake Stripe server driven by the official SDK, a browser-like HTTP client and a webhook
endpoint that verifies signatures as the app does."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import stripe
from django.core.management import call_command
from django.core.management.base import CommandError

from fakestripe.server import FakeStripe, FakeStripeError
from tests.fakestripe.conftest import API_KEY, WEBHOOK_SECRET, WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
SUCCESS_URL = "http://127.0.0.1:8000/wallet/topups/7/done/?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "http://127.0.0.1:8000/wallet/topups/7/cancelled/"


def session_params(**overrides):
    params = {
        "mode": "payment",
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
        "client_reference_id": "7",
        "customer_email": "ada@example.com",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 2000,
                    "product_data": {"name": "TokenByte credit"},
                },
            }
        ],
        "metadata": {"topup_id": "7", "user_id": "42"},
        "payment_intent_data": {"metadata": {"topup_id": "7"}},
    }
    params.update(overrides)
    return {key: value for key, value in params.items() if value is not None}


def create(client, **overrides):
    return client.v1.checkout.sessions.create(params=session_params(**overrides))


def success_url(session_id):
    return SUCCESS_URL.replace("{CHECKOUT_SESSION_ID}", session_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------
# API


def test_a_created_session_is_a_checkout_session_with_its_amounts_url_and_metadata(fake, client):
    before = int(time.time())
    session = create(
        client,
        line_items=[
            {
                "quantity": 2,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 1000,
                    "product_data": {"name": "TokenByte credit"},
                },
            },
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 250,
                    "product_data": {"name": "Bonus"},
                },
            },
        ],
    )

    assert isinstance(session, stripe.checkout.Session)
    assert session.id.startswith("cs_test_")
    assert session.object == "checkout.session"
    assert (session.mode, session.status, session.payment_status) == ("payment", "open", "unpaid")
    assert (session.amount_total, session.amount_subtotal, session.currency) == (2250, 2250, "usd")
    assert session.url == f"{fake.url}/c/pay/{session.id}"
    assert session.client_reference_id == "7"
    assert session.customer_email == "ada@example.com"
    assert session.metadata.to_dict() == {"topup_id": "7", "user_id": "42"}
    assert (session.success_url, session.cancel_url) == (SUCCESS_URL, CANCEL_URL)
    assert session.payment_intent is None
    assert session.livemode is False
    assert before <= session.created <= int(time.time())
    assert session.expires_at == session.created + 24 * 60 * 60

    fetched = client.v1.checkout.sessions.retrieve(session.id)
    assert fetched.to_dict() == session.to_dict()


def test_a_session_can_be_read_with_its_line_items(client):
    session = create(client)

    fetched = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["line_items"]})

    [item] = fetched.line_items.data
    assert (item.description, item.quantity, item.amount_total) == ("TokenByte credit", 1, 2000)
    assert (item.price.unit_amount, item.price.currency) == (2000, "usd")


def test_the_same_idempotency_key_and_params_return_the_same_session(client):
    options = {"idempotency_key": "topup-7"}
    first = client.v1.checkout.sessions.create(params=session_params(), options=options)
    again = client.v1.checkout.sessions.create(params=session_params(), options=options)

    assert again.id == first.id
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.last_response.headers


def test_the_same_idempotency_key_with_other_params_is_an_idempotency_error(client):
    options = {"idempotency_key": "topup-8"}
    client.v1.checkout.sessions.create(params=session_params(), options=options)

    with pytest.raises(stripe.IdempotencyError) as caught:
        client.v1.checkout.sessions.create(
            params=session_params(client_reference_id="8"), options=options
        )

    assert caught.value.http_status == 400
    assert caught.value.error.type == "idempotency_error"
    assert "topup-8" in caught.value.user_message


def test_payment_method_types_is_rejected_as_the_pinned_api_version_removed_it(fake, client):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, payment_method_types=["card"])

    assert caught.value.http_status == 400
    assert caught.value.user_message == "Received unknown parameter: payment_method_types"
    assert caught.value.param == "payment_method_types"
    assert fake.events() == []


@pytest.mark.parametrize(
    ("overrides", "message", "param"),
    [
        ({"mode": None}, "Missing required param: mode.", "mode"),
        ({"success_url": None}, "Missing required param: success_url.", "success_url"),
        ({"cancel_url": None}, "Missing required param: cancel_url.", "cancel_url"),
        ({"line_items": None}, "Missing required param: line_items.", "line_items"),
        ({"colour": "blue"}, "Received unknown parameter: colour", "colour"),
        (
            {"line_items": [{"quantity": 1, "price_data": {"currency": "usd", "amount": 5}}]},
            "Received unknown parameter: line_items[0][price_data][amount]",
            "line_items[0][price_data][amount]",
        ),
        (
            {"line_items": [{"price_data": {"currency": "usd", "unit_amount": 900}}]},
            "Missing required param: line_items[0][quantity].",
            "line_items[0][quantity]",
        ),
    ],
)
def test_bad_params_are_a_400_naming_the_param(client, overrides, message, param):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, **overrides)

    assert caught.value.http_status == 400
    assert (caught.value.user_message, caught.value.param) == (message, param)


def test_a_wrong_or_missing_api_key_is_a_401(fake):
    wrong = stripe.StripeClient(
        "sk_test_wrong_key_1234", base_addresses={"api": fake.url}, max_network_retries=0
    )
    with pytest.raises(stripe.AuthenticationError) as caught:
        wrong.v1.checkout.sessions.create(params=session_params())
    assert caught.value.http_status == 401
    assert caught.value.user_message == "Invalid API Key provided: sk_test_****1234"

    answer = httpx.post(f"{fake.url}/v1/checkout/sessions", data={"mode": "payment"})
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert fake.events() == []


def test_an_unknown_session_is_a_404_resource_missing(client):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.checkout.sessions.retrieve("cs_test_nope")

    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert caught.value.user_message == "No such checkout.session: 'cs_test_nope'"


# --------------------------------------------------------------------------------------------
# The hosted page and the events it sends


def test_the_hosted_page_shows_the_product_amount_email_and_three_actions(fake, client):
    session = create(client)

    page = httpx.get(session.url)

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    assert "<title>Pay $20.00 · Fake Stripe Checkout</title>" in html
    assert "TokenByte credit" in html
    assert "ada@example.com" in html
    assert f'<form method="post" action="/c/pay/{session.id}/pay">' in html
    assert '<button type="submit" class="primary">Pay</button>' in html
    assert f'formaction="/c/pay/{session.id}/pay-async">Pay later (async)</button>' in html
    assert f'<a href="{CANCEL_URL}">Cancel</a>' in html


def test_the_page_asks_for_an_email_when_the_session_has_none(client):
    session = create(client, customer_email=None)

    html = httpx.get(session.url).text

    assert '<input type="email" id="email" name="email" autocomplete="email" required>' in html


def test_an_unknown_session_page_is_a_404(fake):
    page = httpx.get(f"{fake.url}/c/pay/cs_test_nope")

    assert page.status_code == 404
    assert "Checkout session not found" in page.text


def test_paying_redirects_to_success_url_and_sends_a_signed_completed_event(fake, client, receiver):
    session = create(client)

    answer = httpx.post(f"{session.url}/pay")

    assert answer.status_code == 303
    assert answer.headers["location"] == success_url(session.id)
    [delivery] = fake.wait_for_deliveries("checkout.session.completed")
    assert (delivery["status"], delivery["ok"], delivery["attempt"]) == (200, True, 1)
    [received] = receiver.received
    event = received["event"]  # verified by stripe.Webhook.construct_event
    assert received["error"] is None
    assert isinstance(event, stripe.Event)
    assert event.type == "checkout.session.completed"
    assert event.api_version == stripe.api_version
    assert (event.livemode, event.pending_webhooks) == (False, 1)
    paid = event.data.object
    assert (paid.id, paid.status, paid.payment_status) == (session.id, "complete", "paid")
    assert paid.payment_intent.startswith("pi_")
    assert paid.metadata.to_dict() == {"topup_id": "7", "user_id": "42"}
    assert paid.customer_details.email == "ada@example.com"
    headers = received["headers"]
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["User-Agent"] == "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
    timestamp = int(headers["Stripe-Signature"].split(",")[0].removeprefix("t="))
    assert headers["Stripe-Signature"] == stripe.WebhookSignature.generate_signature_header(
        received["body"], WEBHOOK_SECRET, timestamp=timestamp
    )
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"

    page = httpx.get(f"{fake.url}/c/pay/{session.id}").text
    assert "Payment complete." in page
    assert f'<a href="{success_url(session.id)}">Return to the merchant</a>' in page
    assert "<button" not in page


def test_paying_twice_is_refused_and_sends_nothing_more(fake, client):
    session = create(client)
    fake.pay(session.id)

    again = httpx.post(f"{fake.url}/c/pay/{session.id}/pay")

    assert again.status_code == 409
    assert "its status is complete, not open" in again.text
    with pytest.raises(FakeStripeError) as caught:
        fake.pay(session.id)
    assert caught.value.status == 400
    assert [event["type"] for event in fake.events()] == ["checkout.session.completed"]


def test_an_async_payment_completes_unpaid_then_succeeds(fake, client, receiver):
    session = create(client)

    answer = httpx.post(f"{fake.url}/c/pay/{session.id}/pay-async")

    assert answer.status_code == 303
    assert answer.headers["location"] == success_url(session.id)
    [completed] = fake.events("checkout.session.completed")
    snapshot = completed["event"]["data"]["object"]
    assert (snapshot["status"], snapshot["payment_status"]) == ("complete", "unpaid")
    assert snapshot["payment_intent"].startswith("pi_")
    page = httpx.get(f"{fake.url}/c/pay/{session.id}").text
    assert "Payment processing" in page
    assert '<button type="submit" class="primary">Succeed payment</button>' in page
    assert '<button type="submit">Fail payment</button>' in page

    settled = httpx.post(f"{fake.url}/c/pay/{session.id}/async-succeed")

    assert settled.status_code == 303
    assert settled.headers["location"] == success_url(session.id)
    fake.wait_for_deliveries("checkout.session.async_payment_succeeded")
    assert receiver.types() == [
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
    ]
    assert receiver.received[1]["event"].data.object.payment_status == "paid"
    assert "Payment complete." in httpx.get(f"{fake.url}/c/pay/{session.id}").text


def test_an_async_payment_that_fails_stays_unpaid_and_cannot_be_refunded(fake, client, receiver):
    session = create(client)
    fake.pay_async(session.id)

    failed = fake.async_fail(session.id)

    assert (failed["status"], failed["payment_status"]) == ("complete", "unpaid")
    fake.wait_for_deliveries("checkout.session.async_payment_failed")
    assert receiver.types() == [
        "checkout.session.completed",
        "checkout.session.async_payment_failed",
    ]
    assert receiver.received[1]["event"].data.object.payment_status == "unpaid"
    assert "Payment failed." in httpx.get(f"{fake.url}/c/pay/{session.id}").text
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.refunds.create(params={"payment_intent": failed["payment_intent"]})
    assert caught.value.code == "charge_not_refundable"
    with pytest.raises(FakeStripeError):
        fake.async_succeed(session.id)


# --------------------------------------------------------------------------------------------
# Expiry


def test_expiring_an_open_session_sends_expired_once(fake, client, receiver):
    session = create(client)

    expired = client.v1.checkout.sessions.expire(session.id)

    assert (expired.status, expired.url) == ("expired", None)
    fake.wait_for_deliveries("checkout.session.expired")
    assert receiver.types() == ["checkout.session.expired"]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.checkout.sessions.expire(session.id)
    assert caught.value.http_status == 400
    paying = httpx.post(f"{fake.url}/c/pay/{session.id}/pay")
    assert paying.status_code == 409
    assert "This checkout session has expired." in paying.text
    assert len(fake.events("checkout.session.expired")) == 1


def test_a_session_past_expires_at_expires_when_read(receiver):
    # Without the background check (an hour apart), only the read can expire it.
    with FakeStripe(
        api_key=API_KEY,
        webhook_url=receiver.url,
        webhook_secret=WEBHOOK_SECRET,
        expiry_check_seconds=3600,
    ) as fake:
        client = stripe.StripeClient(
            API_KEY, base_addresses={"api": fake.url}, max_network_retries=0
        )
        session = create(client, expires_at=int(time.time()) + 2)
        time.sleep(max(0.0, session.expires_at - time.time()) + 0.05)

        fetched = client.v1.checkout.sessions.retrieve(session.id)
        client.v1.checkout.sessions.retrieve(session.id)

        assert fetched.status == "expired"
        [delivery] = fake.wait_for_deliveries("checkout.session.expired")
        assert delivery["ok"] is True
        assert len(fake.events("checkout.session.expired")) == 1


def test_the_background_check_expires_a_session_nobody_reads(fake, client, receiver):
    session = create(client, expires_at=int(time.time()) + 2)

    fake.wait_for_deliveries("checkout.session.expired", timeout=5)

    assert receiver.received[0]["event"].data.object.id == session.id
    assert fake.session(session.id)["status"] == "expired"
    assert len(fake.events("checkout.session.expired")) == 1


def test_an_expiry_more_than_a_day_ahead_is_refused(client):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, expires_at=int(time.time()) + 25 * 60 * 60)

    assert caught.value.param == "expires_at"


# --------------------------------------------------------------------------------------------
# Refunds


def test_refunds_are_partial_then_full_then_refused(fake, client, receiver):
    session = create(client)
    payment_intent = fake.pay(session.id)["payment_intent"]

    partial = client.v1.refunds.create(
        params={"payment_intent": payment_intent, "amount": 500, "reason": "requested_by_customer"}
    )
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"payment_intent": payment_intent, "amount": 1501})
    rest = client.v1.refunds.create(params={"payment_intent": payment_intent})
    with pytest.raises(stripe.InvalidRequestError) as nothing_left:
        client.v1.refunds.create(params={"payment_intent": payment_intent, "amount": 1})

    assert isinstance(partial, stripe.Refund)
    assert partial.id.startswith("re_")
    assert (partial.amount, partial.status, partial.payment_intent) == (
        500,
        "succeeded",
        payment_intent,
    )
    assert (too_much.value.http_status, too_much.value.param) == (400, "amount")
    assert too_much.value.user_message == (
        "Refund amount ($15.01) is greater than unrefunded amount on charge ($15.00)"
    )
    assert rest.amount == 1500
    assert nothing_left.value.http_status == 400
    assert nothing_left.value.code == "charge_already_refunded"
    assert client.v1.refunds.retrieve(partial.id).to_dict() == partial.to_dict()
    listed = client.v1.refunds.list(params={"payment_intent": payment_intent, "limit": 100})
    assert [refund.id for refund in listed.data] == [rest.id, partial.id]
    assert listed.has_more is False

    deliveries = fake.wait_for_deliveries("charge.refunded", count=2)
    assert [delivery["ok"] for delivery in deliveries] == [True, True]
    charges = [item["event"].data.object for item in receiver.received[1:]]
    assert receiver.types() == ["checkout.session.completed", "charge.refunded", "charge.refunded"]
    assert [(c.amount, c.amount_refunded, c.refunded) for c in charges] == [
        (2000, 500, False),
        (2000, 2000, True),
    ]
    assert charges[0].id.startswith("ch_")
    assert charges[1].id == charges[0].id
    assert charges[1].payment_intent == payment_intent
    assert charges[1].currency == "usd"
    assert charges[1].metadata.to_dict() == {"topup_id": "7"}
    assert [refund.id for refund in charges[1].refunds.data] == [rest.id, partial.id]
    assert charges[1].refunds.total_count == 2


def test_a_refund_of_an_unknown_payment_intent_is_a_404(client):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.refunds.create(params={"payment_intent": "pi_nope"})

    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")


def test_a_dashboard_refund_sends_charge_refunded_with_the_session_metadata(fake, client, receiver):
    session = create(client, payment_intent_data=None)
    payment_intent = fake.pay(session.id)["payment_intent"]

    answer = httpx.post(
        f"{fake.url}/_fake/payment_intents/{payment_intent}/refund", json={"amount": 700}
    )

    assert answer.status_code == 200
    assert (answer.json()["amount"], answer.json()["object"]) == (700, "refund")
    fake.wait_for_deliveries("charge.refunded")
    charge = receiver.received[-1]["event"].data.object
    assert (charge.amount_refunded, charge.refunded) == (700, False)
    assert charge.metadata.to_dict() == {"topup_id": "7", "user_id": "42"}
    rest = fake.refund(payment_intent)
    assert rest["amount"] == 1300


# --------------------------------------------------------------------------------------------
# Deliveries: retries, giving up, resending, order


def test_a_failing_endpoint_gets_retries_of_the_same_event(fake, client, receiver):
    receiver.statuses.extend([500, 500])
    session = create(client)

    fake.pay(session.id)

    deliveries = fake.wait_for_deliveries("checkout.session.completed", count=3)
    assert [(d["attempt"], d["status"], d["ok"]) for d in deliveries] == [
        (1, 500, False),
        (2, 500, False),
        (3, 200, True),
    ]
    assert len({d["event_id"] for d in deliveries}) == 1
    # This session's events only: a late retry of an earlier test's event may land here too.
    ids = [
        item["event"].id
        for item in receiver.received
        if item["event"] is not None and item["event"].data.object.id == session.id
    ]
    assert ids == [deliveries[0]["event_id"]] * 3
    assert all(item["error"] is None for item in receiver.received)
    assert fake.events()[0]["delivery_state"] == "delivered"


def test_an_unreachable_endpoint_is_given_up_after_the_last_retry(fake, client):
    fake.webhook_url = f"http://127.0.0.1:{free_port()}/billing/stripe/webhook/"
    fake.retry_delays = [0.05, 0.05]
    session = create(client)

    fake.pay(session.id)

    deliveries = fake.wait_for_deliveries("checkout.session.completed", count=3)
    assert [d["status"] for d in deliveries] == [None, None, None]
    assert all(d["error"].startswith("ClientConnectorError") for d in deliveries)
    assert [d["gave_up"] for d in deliveries] == [False, False, True]
    time.sleep(0.2)
    [event] = fake.events()
    assert event["delivery_state"] == "failed"
    assert len(event["deliveries"]) == 3


def test_a_slow_endpoint_times_out_and_is_retried(fake, client, receiver):
    fake.delivery_timeout = 0.2
    receiver.delays.append(0.6)
    session = create(client)

    fake.pay(session.id)

    first, second = fake.wait_for_deliveries("checkout.session.completed", count=2)
    assert (first["status"], first["error"]) == (None, "timed out after 0.2 s")
    assert (second["status"], second["ok"]) == (200, True)


def test_an_event_can_be_resent_with_the_same_id(fake, client, receiver):
    session = create(client)
    fake.pay(session.id)
    [first] = fake.wait_for_deliveries("checkout.session.completed")

    answer = httpx.post(f"{fake.url}/_fake/events/{first['event_id']}/resend")

    assert answer.status_code == 202
    deliveries = fake.wait_for_deliveries("checkout.session.completed", count=2)
    assert [(d["attempt"], d["resend"], d["ok"]) for d in deliveries] == [
        (1, False, True),
        (2, True, True),
    ]
    assert [item["event"].id for item in receiver.received] == [first["event_id"]] * 2
    assert receiver.received[0]["body"] == receiver.received[1]["body"]
    assert httpx.post(f"{fake.url}/_fake/events/evt_nope/resend").status_code == 404


def test_a_session_s_events_arrive_in_order_even_when_one_is_retried(fake, client, receiver):
    receiver.statuses.append(503)
    session = create(client)
    payment_intent = fake.pay(session.id)["payment_intent"]

    fake.refund(payment_intent, 300)

    fake.wait_for_deliveries("charge.refunded")
    assert [(item["event"].type, item["status"]) for item in receiver.received] == [
        ("checkout.session.completed", 503),
        ("checkout.session.completed", 200),
        ("charge.refunded", 200),
    ]


def test_without_a_webhook_url_events_are_recorded_and_not_sent(fake, client, receiver):
    fake.webhook_url = None
    session = create(client)

    fake.pay(session.id)

    time.sleep(0.1)
    [event] = fake.events()
    assert (event["type"], event["delivery_state"], event["deliveries"]) == (
        "checkout.session.completed",
        "no_endpoint",
        [],
    )
    assert receiver.received == []


# --------------------------------------------------------------------------------------------
# The JSON controls


def test_the_json_controls_drive_a_session_and_list_its_events(fake, client):
    session = create(client)

    paid = httpx.post(f"{fake.url}/_fake/sessions/{session.id}/pay")
    fake.wait_for_deliveries("checkout.session.completed")
    listed = httpx.get(f"{fake.url}/_fake/events", params={"type": "checkout.session.completed"})
    missing = httpx.post(f"{fake.url}/_fake/sessions/cs_test_nope/expire")

    assert paid.status_code == 200
    assert (paid.json()["id"], paid.json()["payment_status"]) == (session.id, "paid")
    [record] = listed.json()["data"]
    assert record["event"]["data"]["object"]["id"] == session.id
    assert record["delivery_state"] == "delivered"
    assert [d["status"] for d in record["deliveries"]] == [200]
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "resource_missing"

    assert httpx.post(f"{fake.url}/_fake/reset").json() == {"reset": True}
    assert fake.events() == []
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.retrieve(session.id)


# --------------------------------------------------------------------------------------------
# The management command


def test_the_command_serves_the_api_and_signs_webhooks_until_terminated():
    receiver = WebhookReceiver("whsec_from_the_command")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "fake_stripe",
            f"--port={port}",
            "--api-key=sk_test_from_the_command",
            f"--webhook-url={receiver.url}",
            "--webhook-secret=whsec_from_the_command",
            "--retry-delays=0.1",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        assert banner.startswith(f"Fake Stripe listening on http://127.0.0.1:{port} ")
        client = stripe.StripeClient(
            "sk_test_from_the_command",
            base_addresses={"api": f"http://127.0.0.1:{port}"},
            max_network_retries=0,
        )
        session = create(client)
        assert httpx.post(f"http://127.0.0.1:{port}/_fake/sessions/{session.id}/pay").is_success
        delivered = process.stdout.readline()
        assert delivered.startswith("webhook checkout.session.completed evt_")
        assert delivered.endswith(" attempt 1: HTTP 200\n")
        [received] = receiver.received
        assert received["event"].data.object.id == session.id
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
        receiver.close()
    assert process.returncode == 0, stderr
    assert stdout.endswith("Fake Stripe stopped.\n")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": 99999}, "must be between 1 and 65535: 99999"),
        ({"retry_delays": "1,soon"}, "not a number of seconds: 'soon'"),
        ({"webhook_url": "ftp://example.com/"}, "not an http(s) URL: 'ftp://example.com/'"),
    ],
)
def test_the_command_rejects_bad_arguments(options, message):
    with pytest.raises(CommandError) as caught:
        call_command("fake_stripe", **options)

    assert str(caught.value) == message


def test_the_command_reports_a_port_in_use(fake):
    with pytest.raises(CommandError) as caught:
        call_command("fake_stripe", port=fake.port)

    assert str(caught.value) == f"cannot listen on 127.0.0.1:{fake.port}: Address already in use"
