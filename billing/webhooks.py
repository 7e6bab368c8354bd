"""Stripe's webhook endpoint: /billing/stripe/webhook/.

The raw body is verified against the Stripe-Signature header before anything is read from it.
Answers: 200 when the event is applied or was applied before (a replay), 400 when the signature
does not verify (Stripe does not retry those; forged and stale deliveries end there), 5xx when
applying it failed, so Stripe retries later.
"""

import logging

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.payments import stripe_event_process
from tokenbyte.errors import ApplicationError

logger = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    signature = request.headers.get("Stripe-Signature", "")
    try:
        event = stripe_event_process(payload=request.body, signature=signature)
    except ApplicationError as exc:
        logger.warning("stripe webhook refused: %s", exc.message)
        return JsonResponse({"error": {"code": exc.code, "message": exc.message}}, status=400)
    except Exception:
        logger.exception("stripe webhook failed; Stripe will retry")
        return JsonResponse(
            {"error": {"code": "processing_failed", "message": "Try again later."}}, status=500
        )
    return JsonResponse({"received": True, "event": event.event_id, "outcome": event.outcome})
