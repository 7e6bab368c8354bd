import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenbyte.money import format_usd, token_cost_micros, usd_to_micros

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "s" * 50,
    "ALLOWED_HOSTS": "relay.example.com",
    "DATABASE_URL": "postgres://u@127.0.0.1:5/db",
    "REDIS_URL": "redis://127.0.0.1:6/0",
    "STRIPE_SECRET_KEY": "sk_test_x",
    "STRIPE_WEBHOOK_SECRET": "whsec_x",
    "FIELD_ENCRYPTION_KEY": "3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
}


def load_settings(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PRODUCTION}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('ok')"],
        env={**clean, "DJANGO_SETTINGS_MODULE": "tokenbyte.settings", **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_production_settings_load_when_every_variable_is_set():
    result = load_settings(PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("missing", sorted(set(PRODUCTION) - {"DEBUG"}))
def test_start_up_stops_with_the_name_of_a_missing_production_variable(missing):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}

    result = load_settings(env)

    assert result.returncode != 0
    assert f"Missing required environment variable {missing}" in result.stderr


def test_the_embedded_default_needs_no_variables():
    result = load_settings({})
    assert result.returncode == 0, result.stderr


def test_the_upstream_client_may_be_a_module_path():
    result = load_settings({"RELAY_UPSTREAM_CLIENT": "bench.upstream_httpx"})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("value", ["httpx", "httpx-aiohttp", "bench/upstream_httpx.py"])
def test_start_up_refuses_an_upstream_client_that_is_neither_aiohttp_nor_a_module_path(value):
    result = load_settings({"RELAY_UPSTREAM_CLIENT": value})

    assert result.returncode != 0
    assert "RELAY_UPSTREAM_CLIENT must be aiohttp or a module's dotted path" in result.stderr


def test_usd_amounts_become_exact_micros():
    assert usd_to_micros("2.50") == 2_500_000
    assert usd_to_micros("0.000001") == 1
    assert format_usd(2_500_000) == "$2.50"
    assert format_usd(1_234_567) == "$1.234567"
    assert format_usd(-10) == "-$0.00001"


def test_costs_round_up_to_a_whole_micro_usd():
    # 1000 prompt tokens at $2.50/M, 200 of them cached at $1.25/M, 10 completion at $10/M
    cost = token_cost_micros(
        prompt_tokens=1000,
        completion_tokens=10,
        cached_tokens=200,
        input_price_micros_per_mtok=2_500_000,
        output_price_micros_per_mtok=10_000_000,
        cached_input_price_micros_per_mtok=1_250_000,
    )
    assert cost == 2000 + 250 + 100
    assert (
        token_cost_micros(
            prompt_tokens=1,
            completion_tokens=0,
            cached_tokens=0,
            input_price_micros_per_mtok=1,
            output_price_micros_per_mtok=0,
            cached_input_price_micros_per_mtok=0,
        )
        == 1
    )
