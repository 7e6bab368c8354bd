"""The catalog part of /api/: the models you can call, with their prices."""

from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.models import Model
from catalog.selectors import model_callable_get, models_callable_search
from tokenbyte.api import ErrorSerializer
from usage.selectors import usd_string


class ModelOutput(serializers.ModelSerializer):
    """Prices are integer micro-USD (per 1M tokens, or per unit for other price units) and the
    same amounts as exact USD strings."""

    class ProviderOutput(serializers.Serializer):
        slug = serializers.CharField()
        name = serializers.CharField()

    id = serializers.CharField(source="model_id")
    name = serializers.CharField(source="display_name")
    provider = ProviderOutput()
    capabilities = serializers.ListField(child=serializers.CharField())
    cached_input_price_micros_per_mtok = serializers.IntegerField(
        source="effective_cached_input_price",
        help_text="The price of prompt tokens read from the provider's cache.",
    )
    cache_write_price_micros_per_mtok = serializers.SerializerMethodField(
        help_text="The price of prompt tokens written to the provider's cache (Anthropic's "
        "cache_creation_input_tokens)."
    )
    input_price_usd_per_mtok = serializers.SerializerMethodField()
    output_price_usd_per_mtok = serializers.SerializerMethodField()
    cached_input_price_usd_per_mtok = serializers.SerializerMethodField()
    cache_write_price_usd_per_mtok = serializers.SerializerMethodField()
    unit_price_usd = serializers.SerializerMethodField()

    class Meta:
        model = Model
        fields = [
            "id",
            "name",
            "provider",
            "description",
            "call_type",
            "context_length",
            "max_output_tokens",
            "capabilities",
            "price_unit",
            "input_price_micros_per_mtok",
            "output_price_micros_per_mtok",
            "cached_input_price_micros_per_mtok",
            "cache_write_price_micros_per_mtok",
            "unit_price_micros",
            "input_price_usd_per_mtok",
            "output_price_usd_per_mtok",
            "cached_input_price_usd_per_mtok",
            "cache_write_price_usd_per_mtok",
            "unit_price_usd",
        ]

    def get_input_price_usd_per_mtok(self, model: Model) -> str:
        return usd_string(model.input_price_micros_per_mtok)

    def get_output_price_usd_per_mtok(self, model: Model) -> str:
        return usd_string(model.output_price_micros_per_mtok)

    def get_cached_input_price_usd_per_mtok(self, model: Model) -> str:
        return usd_string(model.effective_cached_input_price)

    def get_cache_write_price_micros_per_mtok(self, model: Model) -> int:
        if model.cache_write_price_micros_per_mtok is None:
            return model.input_price_micros_per_mtok
        return model.cache_write_price_micros_per_mtok

    def get_cache_write_price_usd_per_mtok(self, model: Model) -> str:
        return usd_string(self.get_cache_write_price_micros_per_mtok(model))

    def get_unit_price_usd(self, model: Model) -> str:
        return usd_string(model.unit_price_micros)


class ModelListApi(APIView):
    """The models you can call (enabled and served by a channel), in catalog order."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "q",
                OpenApiTypes.STR,
                description="Text in the id, name, provider or description (any case).",
            ),
            OpenApiParameter("provider", OpenApiTypes.STR, description="A provider's slug."),
            OpenApiParameter("capability", OpenApiTypes.STR, description="A capability tag."),
            OpenApiParameter("call_type", OpenApiTypes.STR, enum=Model.CallType.values),
        ],
        responses={200: ModelOutput(many=True)},
        operation_id="models_list",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        search = models_callable_search(
            query=params.get("q", ""),
            provider=params.get("provider", "").strip(),
            capability=params.get("capability", "").strip(),
            call_type=params.get("call_type", "").strip(),
        )
        return Response(ModelOutput(search.models, many=True).data)


class ModelDetailApi(APIView):
    """One model you can call, by its id; a model you cannot call is a 404."""

    @extend_schema(
        responses={200: ModelOutput, 404: ErrorSerializer}, operation_id="models_retrieve"
    )
    def get(self, request: Request, model_id: str) -> Response:
        model = model_callable_get(model_id=model_id)
        if model is None:
            raise Http404("No such model.")
        return Response(ModelOutput(model).data)
