"""Async jobs end to end: submitted to the relay (POST /v1/tasks), run by a real Celery worker on
Redis, the media stored and served by signed URL, billed once; a worker killed mid-job; the
embedded default's broker-less runs."""

import base64
import io
import os
import signal
import subprocess
import sys
import wave
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from accounts.services import api_token_create
from billing.models import Hold, LedgerEntry
from billing.selectors import wallet_ledger_sum_micros
from billing.services import credit_grant, wallet_get_or_create
from catalog.services import channel_create
from tasks.models import AsyncTask
from tests.factories import ModelFactory, UserFactory
from tests.relay.conftest import RELAY_ROLE, RelayServer, wait_for
from tokenbyte.celery import app as celery_app
from usage.models import RequestLog

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
IMAGE_PRICE = 40_000
SPEECH_PRICE = 15_000_000  # per 1M characters
SECOND_PRICE = 100  # per second of audio


class Worker:
    """`celery worker` in its own process, on the test database and Redis, as in production."""

    def __init__(self, log_path: Path) -> None:
        db = settings.DATABASES["default"]
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{RELAY_ROLE}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            # A job a dead worker held is handed to another after this many seconds.
            "CELERY_VISIBILITY_TIMEOUT_SECONDS": "3",
            "CELERY_UNACKED_RESTORE_SECONDS": "1",
            # A run every channel failed is retried after 1 s, then 2 s.
            "TASK_RETRY_SECONDS": "1",
        }
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> "Worker":
        self.log = open(self.log_path, "a")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tokenbyte", "worker", "--pool=solo",
             "--concurrency=1", "--loglevel=INFO", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(lambda: "ready" in self.log_path.read_text(), 30, "the worker to start")
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture
def worker(relay, tmp_path):
    celery_app.control.purge()
    started = Worker(tmp_path / "worker.log").start()
    yield started
    started.stop()


@pytest.fixture
def customer(transactional_db, mock):
    ModelFactory(
        model_id="img-job", call_type="image", price_unit="image", unit_price_micros=IMAGE_PRICE
    )
    ModelFactory(
        model_id="tts-job", call_type="audio", price_unit="mchar", unit_price_micros=SPEECH_PRICE
    )
    ModelFactory(
        model_id="stt-job", call_type="audio", price_unit="second", unit_price_micros=SECOND_PRICE
    )
    channel_create(
        name="media-jobs", type="mock", base_url=mock.base_url,
        model_ids=["img-job", "tts-job", "stt-job"],
    )  # fmt: skip
    user = UserFactory()
    wallet = wallet_get_or_create(user=user)
    credit_grant(wallet=wallet, amount_micros=1_000_000, reason="test")
    token, key = api_token_create(owner=user, name="jobs")
    return {"user": user, "wallet": wallet, "token": token, "key": key}


def submit(relay, key: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{relay.url}/v1/tasks", json=body, headers={"Authorization": f"Bearer {key}", **headers},
        timeout=30,
    )  # fmt: skip


def get(relay, key: str, path: str) -> httpx.Response:
    return httpx.get(f"{relay.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def finished(relay, key: str, task_id: str, timeout: float = 30) -> dict:
    def done():
        body = get(relay, key, f"/v1/tasks/{task_id}").json()
        return body if body["status"] in ("succeeded", "failed") else None

    return wait_for(done, timeout, f"{task_id} to finish")


def books(customer) -> tuple[int, int]:
    wallet = customer["wallet"]
    wallet.refresh_from_db()
    assert wallet.balance_micros == wallet_ledger_sum_micros(wallet=wallet)
    return wallet.balance_micros, wallet.held_micros


def wav_bytes(seconds: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(b"\0\0" * 8000 * seconds)
    return out.getvalue()


IMAGE_JOB = {"type": "image.generation", "model": "img-job", "input": {"prompt": "a red fox"}}


def test_an_image_job_is_held_at_submit_run_by_a_worker_and_billed_once(relay, customer, worker):
    response = submit(relay, customer["key"], IMAGE_JOB)

    assert response.status_code == 202
    task = response.json()
    assert (task["object"], task["status"], task["type"], task["model"]) == (
        "task", "queued", "image.generation", "img-job",
    )  # fmt: skip
    done = finished(relay, customer["key"], task["id"])

    assert done["status"] == "succeeded", done
    assert (done["cost_micros"], done["cost_usd"], done["attempts"]) == (IMAGE_PRICE, "0.040000", 1)
    media = httpx.get(relay.url + httpx.URL(done["result"]["url"]).raw_path.decode(), timeout=10)
    assert media.status_code == 200
    assert media.headers["content-type"] == "image/png"
    assert media.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert done["result"]["content_type"] == "image/png"
    assert books(customer) == (1_000_000 - IMAGE_PRICE, 0)
    usage = LedgerEntry.objects.get(wallet=customer["wallet"], kind="usage")
    assert usage.amount_micros == -IMAGE_PRICE
    job = AsyncTask.objects.get(public_id=task["id"])
    log = RequestLog.objects.get(request_id=job.request_id)
    assert (log.call_type, log.endpoint, log.status_code, log.cost_micros) == (
        "images.generations", "tasks", 200, IMAGE_PRICE,
    )  # fmt: skip
    listed = get(relay, customer["key"], "/v1/tasks").json()
    assert [t["id"] for t in listed["data"]] == [task["id"]]


def test_a_retried_submit_with_the_same_idempotency_key_is_the_same_job(relay, customer):
    celery_app.control.purge()
    first = submit(relay, customer["key"], IMAGE_JOB, **{"Idempotency-Key": "order-42"})
    again = submit(relay, customer["key"], IMAGE_JOB, **{"Idempotency-Key": "order-42"})
    other = {**IMAGE_JOB, "input": {"prompt": "a blue fox"}}
    conflict = submit(relay, customer["key"], other, **{"Idempotency-Key": "order-42"})

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_reused"
    assert AsyncTask.objects.count() == 1
    # Held once, for the one job (no worker runs in this test).
    assert books(customer) == (1_000_000, IMAGE_PRICE)
    celery_app.control.purge()


def test_a_submit_the_balance_cannot_cover_is_refused_and_writes_nothing(relay, customer):
    ModelFactory(model_id="img-dear", call_type="image", price_unit="image",
                 unit_price_micros=2_000_000)  # fmt: skip
    channel_create(name="dear", type="mock", base_url="http://127.0.0.1:9/v1",
                   model_ids=["img-dear"])  # fmt: skip

    refused = submit(relay, customer["key"], {**IMAGE_JOB, "model": "img-dear"})

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert not AsyncTask.objects.exists()
    assert not Hold.objects.exists()
    assert books(customer) == (1_000_000, 0)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"type": "video.generation", "model": "img-job", "input": {}}, "type"),
        ({"type": "image.generation", "model": "img-job", "input": "x"}, "input"),
        ({"type": "image.generation", "model": "img-job", "input": {}}, "prompt"),
        ({"type": "image.generation", "model": "img-job", "input": {"prompt": "p", "n": 2}},
         "input.n"),
        ({"type": "audio.speech", "model": "img-job", "input": {"input": "hi", "voice": "a"}},
         "model"),
        ({"type": "audio.transcription", "model": "stt-job", "input": {"file": {"data": "%%"}}},
         "input.file.data"),
    ],
)  # fmt: skip
def test_a_bad_submit_is_a_400_naming_the_parameter(relay, customer, body, param):
    response = submit(relay, customer["key"], body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert not AsyncTask.objects.exists()


def test_speech_and_transcription_jobs_store_their_media_and_cost_their_units(
    relay, customer, worker
):
    speech = submit(
        relay,
        customer["key"],
        {
            "type": "audio.speech",
            "model": "tts-job",
            "input": {"input": "Hello there", "voice": "alloy", "response_format": "wav"},
        },
    )
    audio = base64.b64encode(wav_bytes(3)).decode()
    transcript = submit(relay, customer["key"], {"type": "audio.transcription", "model": "stt-job",
                        "input": {"file": {"data": audio, "filename": "a.wav"}}})  # fmt: skip

    spoken = finished(relay, customer["key"], speech.json()["id"])
    heard = finished(relay, customer["key"], transcript.json()["id"])

    assert spoken["status"] == heard["status"] == "succeeded", (spoken, heard)
    assert spoken["cost_micros"] == -(-11 * SPEECH_PRICE // 1_000_000)
    assert heard["cost_micros"] == 3 * SECOND_PRICE
    assert heard["result"]["text"].startswith("Mock transcript")
    # The finished job keeps what its upload was, not its bytes.
    job_input = AsyncTask.objects.get(public_id=heard["id"]).input
    assert job_input["file"] == {"filename": "a.wav", "base64_characters": len(audio)}
    path = httpx.URL(spoken["result"]["url"]).raw_path.decode()
    with wave.open(io.BytesIO(httpx.get(relay.url + path, timeout=10).content)) as played:
        assert played.getnframes() > 0
    assert books(customer)[1] == 0


def broken_channel(mock, model_id: str = "img-broken"):
    ModelFactory(model_id=model_id, call_type="image", price_unit="image",
                 unit_price_micros=IMAGE_PRICE)  # fmt: skip
    return channel_create(
        name=f"{model_id}-channel", type="mock", base_url=mock.base_url, model_ids=[model_id],
        model_mapping={model_id: "mock-fault-500"},
    )  # fmt: skip


def test_a_job_the_upstream_keeps_failing_is_retried_then_failed_and_costs_nothing(
    relay, customer, worker, mock
):
    broken_channel(mock)

    task = submit(relay, customer["key"], {**IMAGE_JOB, "model": "img-broken"}).json()
    done = finished(relay, customer["key"], task["id"])

    assert (done["status"], done["attempts"], done["cost_micros"]) == ("failed", 3, 0)
    assert done["error"]["message"]
    assert done["result"] is None
    assert books(customer) == (1_000_000, 0)
    log = RequestLog.objects.get(request_id=AsyncTask.objects.get().request_id)
    assert (log.status_code >= 500, log.cost_micros) == (True, 0)


def test_a_job_whose_channels_fail_for_now_runs_again_and_succeeds(relay, customer, worker, mock):
    channel = broken_channel(mock, "img-flaky")
    task = submit(relay, customer["key"], {**IMAGE_JOB, "model": "img-flaky"}).json()
    job = AsyncTask.objects.filter(public_id=task["id"])
    wait_for(lambda: job.filter(status="queued", attempts=1).exists(), 20, "the first failure")
    assert job.get().error.startswith("Attempt 1 failed, retrying:")

    channel.model_mapping = {}
    channel.save(update_fields=["model_mapping"])
    done = finished(relay, customer["key"], task["id"])

    assert (done["status"], done["attempts"], done["cost_micros"]) == ("succeeded", 2, IMAGE_PRICE)
    assert done["error"] is None
    assert books(customer) == (1_000_000 - IMAGE_PRICE, 0)


def test_a_worker_killed_mid_job_leaves_it_to_another_and_it_is_billed_once(
    relay, customer, worker, mock, tmp_path
):
    mock.latency_ms = 4000
    task = submit(relay, customer["key"], IMAGE_JOB).json()
    wait_for(lambda: AsyncTask.objects.get(public_id=task["id"]).status == "running", 20,
             "the job to start")  # fmt: skip
    worker.kill()
    mock.latency_ms = 0
    replacement = Worker(tmp_path / "worker-2.log").start()
    try:
        done = finished(relay, customer["key"], task["id"], timeout=60)
    finally:
        replacement.stop()

    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert books(customer) == (1_000_000 - IMAGE_PRICE, 0)
    assert LedgerEntry.objects.filter(wallet=customer["wallet"], kind="usage").count() == 1


@pytest.fixture
def embedded_relay(relay_role, tmp_path):
    """The relay with no broker (the embedded default): jobs run in its own threads."""
    server = RelayServer(tmp_path / "relay.log", RELAY_CATALOG_CACHE_SECONDS="0",
                         REDIS_URL="").start()  # fmt: skip
    yield server
    server.stop()


def test_without_a_broker_the_relay_runs_the_job_itself(embedded_relay, customer):
    response = submit(embedded_relay, customer["key"], IMAGE_JOB)

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    done = finished(embedded_relay, customer["key"], response.json()["id"])
    assert done["status"] == "succeeded"
    assert books(customer) == (1_000_000 - IMAGE_PRICE, 0)


def test_another_users_key_cannot_see_the_job(relay, customer):
    celery_app.control.purge()
    task = submit(relay, customer["key"], IMAGE_JOB).json()
    _, other_key = api_token_create(owner=UserFactory(), name="other")

    assert get(relay, other_key, f"/v1/tasks/{task['id']}").status_code == 404
    assert get(relay, other_key, "/v1/tasks").json()["data"] == []
    celery_app.control.purge()
