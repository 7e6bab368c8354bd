"""The one application error type. Services raise it; each surface maps it to its own shape."""

# The HTTP status an error code means where it is not a plain 400 (the API's error handler and
# console views read it through ApplicationError.status).
STATUS_OF_CODE = {
    "permission_denied": 403,
    "organization_keys_not_allowed": 403,
    "invitation_other_email": 403,
    "not_found": 404,
    "already_member": 409,
    **{f"invitation_{state}": 410 for state in ("accepted", "declined", "revoked", "expired")},
}


class ApplicationError(Exception):
    def __init__(self, message: str, *, code: str = "invalid", extra: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.extra = extra or {}

    @property
    def status(self) -> int:
        """The HTTP status it answers with: `extra["status"]`, else its code's, else 400."""
        return self.extra.get("status", STATUS_OF_CODE.get(self.code, 400))
