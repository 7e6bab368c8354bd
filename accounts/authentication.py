"""/api/ authentication by personal access token (DRF reads this module from its settings, so it
must not import DRF views)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from accounts.models import PersonalAccessToken, User
from accounts.services import ACCESS_TOKEN_PREFIX, access_token_authenticate


class AccessTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer tbp_…`: a personal access token made in Profile."""

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[User, PersonalAccessToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("The Authorization header must be 'Bearer <token>'.")
        secret = parts[1].decode("latin-1")
        if not secret.startswith(ACCESS_TOKEN_PREFIX):
            # Most likely a relay key (sk-…), which only works on /v1.
            raise AuthenticationFailed(
                "That is not a personal access token (tbp_…); create one in Profile."
            )
        token = access_token_authenticate(secret=secret)
        if token is None:
            raise AuthenticationFailed("The access token is unknown, revoked or expired.")
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class AccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.AccessTokenAuthentication"
    name = "accessToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A tbp_… token from Profile."}
