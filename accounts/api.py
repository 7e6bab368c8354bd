"""The accounts part of /api/: personal access tokens, keys and groups."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import PersonalAccessToken, User
from accounts.selectors import access_tokens_for_user
from accounts.services import access_token_create, access_token_revoke
from tokenbyte.api import ErrorSerializer


def _get_access_token_for_user(user: User, token_id: int) -> PersonalAccessToken:
    """The user's access token with this id; another user's is a 404, like a missing one."""
    return get_object_or_404(access_tokens_for_user(user=user), pk=token_id)


class AccessTokenOutput(serializers.ModelSerializer):
    class Meta:
        model = PersonalAccessToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]


class AccessTokenListApi(APIView):
    """List your personal access tokens, or create one (its secret is in this answer only)."""

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    class CreatedSerializer(AccessTokenOutput):
        token = serializers.CharField(help_text="The secret; shown in this answer only.")

        class Meta(AccessTokenOutput.Meta):
            fields = [*AccessTokenOutput.Meta.fields, "token"]

    @extend_schema(responses={200: AccessTokenOutput(many=True)}, operation_id="access_tokens_list")
    def get(self, request: Request) -> Response:
        tokens = access_tokens_for_user(user=request.user)
        return Response(AccessTokenOutput(tokens, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: CreatedSerializer, 400: ErrorSerializer},
        operation_id="access_tokens_create",
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, secret = access_token_create(user=request.user, **data.validated_data)
        token.token = secret
        return Response(self.CreatedSerializer(token).data, status=status.HTTP_201_CREATED)


class AccessTokenRevokeApi(APIView):
    """Revoke one of your personal access tokens; it stops working at once."""

    @extend_schema(request=None, responses={200: AccessTokenOutput, 404: ErrorSerializer})
    def post(self, request: Request, token_id: int) -> Response:
        token = _get_access_token_for_user(request.user, token_id)
        access_token_revoke(token=token)
        return Response(AccessTokenOutput(token).data)
