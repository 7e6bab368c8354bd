"""The settlement outbox: what the database could not take waits on disk and is billed once."""

import asyncio
import os

import pytest
from django.test import override_settings

from accounts.services import api_token_create
from billing import outbox, settlement
from billing.holds import HoldParts
from billing.models import Hold, LedgerEntry, Wallet
from billing.services import credit_grant, hold_acquire, wallet_get_or_create
from tests.billing.test_holds import charge_for
from tests.factories import UserFactory
from tokenbyte import pg
from usage.models import RequestLog

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def folder(tmp_path):
    with override_settings(RELAY_OUTBOX_DIR=str(tmp_path)):
        yield tmp_path


@pytest.fixture
def held_call():
    owner = UserFactory()
    wallet = wallet_get_or_create(user=owner)
    credit_grant(wallet=wallet, amount_micros=1_000_000, reason="test")
    token, _ = api_token_create(owner=owner, name="k")
    hold_acquire(
        request_id="req_outbox", wallet_id=wallet.pk, amount_micros=1070,
        parts=HoldParts(key_id=token.pk), lease_seconds=60,
    )  # fmt: skip
    return charge_for("req_outbox", wallet, token, 1070, 168, 19), wallet


def drain() -> int:
    async def run():
        try:
            return await settlement.outbox_drain()
        finally:
            await pg.close()

    return asyncio.run(run())


def test_a_queued_settlement_survives_on_disk_and_is_billed_once_when_drained(folder, held_call):
    charge, wallet = held_call
    outbox.outbox_put(charge=charge)
    assert outbox.outbox_request_ids() == ["req_outbox"]

    assert drain() == 1
    assert drain() == 0

    assert os.listdir(folder) == []
    wallet = Wallet.objects.get(pk=wallet.pk)
    assert (wallet.balance_micros, wallet.held_micros) == (1_000_000 - 168, 0)
    assert LedgerEntry.objects.filter(kind="usage").count() == 1
    assert RequestLog.objects.get().cost_micros == 168
    assert Hold.objects.get().status == "settled"


def test_a_file_drained_twice_bills_once(folder, held_call):
    charge, wallet = held_call
    outbox.outbox_put(charge=charge)
    drain()
    # A process that crashed between settling and unlinking: the same file again.
    outbox.outbox_put(charge=charge)

    assert drain() == 1
    assert Wallet.objects.get(pk=wallet.pk).balance_micros == 1_000_000 - 168
    assert LedgerEntry.objects.filter(kind="usage").count() == 1


def test_a_claim_of_a_dead_process_is_taken_over_and_a_live_ones_is_left(folder, held_call):
    charge, _ = held_call
    path = outbox.outbox_put(charge=charge)
    os.rename(path, folder / f"req_outbox.json{outbox.CLAIMED}{os.getpid()}")
    assert outbox.outbox_claim() == []  # ours, and we are alive

    os.rename(
        folder / f"req_outbox.json{outbox.CLAIMED}{os.getpid()}",
        folder / f"req_outbox.json{outbox.CLAIMED}999999999",
    )
    [(claimed, again)] = outbox.outbox_claim()

    assert again == charge
    assert claimed.name == f"req_outbox.json{outbox.CLAIMED}{os.getpid()}"


def test_a_settlement_that_cannot_succeed_is_set_aside_and_no_longer_kept_alive(folder, held_call):
    charge, wallet = held_call
    broken = charge.__class__(**{**charge.__dict__, "wallet_id": 987_654})  # no such wallet
    outbox.outbox_put(charge=broken)

    assert drain() == 0

    assert outbox.outbox_request_ids() == []
    assert [name for name in os.listdir(folder) if name.startswith(".failed-")]
    assert Wallet.objects.get(pk=wallet.pk).balance_micros == 1_000_000
