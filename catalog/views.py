from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts.services import playground_key_issue
from catalog.models import Model
from catalog.selectors import models_callable, models_callable_search
from tokenbyte.money import format_usd

MODEL_FILTER_PARAMS = ("q", "provider", "capability", "call_type")


@login_required
def model_list(request: HttpRequest) -> HttpResponse:
    values = {name: request.GET.get(name, "").strip() for name in MODEL_FILTER_PARAMS}
    search = models_callable_search(
        query=values["q"],
        provider=values["provider"],
        capability=values["capability"],
        call_type=values["call_type"],
    )
    context = {
        "models": search.models,
        "search": search,
        "values": values,
        "filtered": any(values.values()),
    }
    return render(request, "catalog/model_list.html", context)


# --- playground ---


def _playground_model(model: Model) -> dict:
    """What the playground's script shows of a model (prices per 1M tokens, formatted)."""
    return {
        "id": model.model_id,
        "name": model.display_name,
        "provider": model.provider.name,
        "context_length": model.context_length,
        "max_output_tokens": model.max_output_tokens,
        "input_price": format_usd(model.input_price_micros_per_mtok),
        "output_price": format_usd(model.output_price_micros_per_mtok),
        "capabilities": list(model.capabilities or ()),
    }


@login_required
def playground(request: HttpRequest) -> HttpResponse:
    models = list(models_callable().filter(call_type=Model.CallType.CHAT))
    context = {
        "models": models,
        "models_data": [_playground_model(m) for m in models],
        # For the copied code: the relay as the user reaches this site.
        "base_url": request.build_absolute_uri("/v1"),
    }
    return render(request, "catalog/playground.html", context)


@never_cache
@login_required
@require_POST
def playground_key(request: HttpRequest) -> JsonResponse:
    """A fresh short-lived relay key for the page's script (CSRF-protected: a POST from a form
    of this site only). The plaintext is in this response and nowhere else."""
    token, key = playground_key_issue(user=request.user)
    return JsonResponse(
        {
            "key": key,
            "expires_at": token.expires_at.isoformat(),
            "expires_in": settings.PLAYGROUND_KEY_TTL_SECONDS,
        }
    )
