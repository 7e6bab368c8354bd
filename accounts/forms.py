import re
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from django import forms
from django.conf import settings
from django.utils import timezone

from accounts.models import ApiToken, QuotaReset, TokenGroup, User
from tokenbyte.money import micros_to_usd, usd_to_micros


def time_zone_choices() -> list[tuple[str, str]]:
    return [(name, name.replace("_", " ")) for name in sorted(available_timezones())]


class ProfileForm(forms.Form):
    """The settings a user edits in Profile; the view saves them through user_profile_update."""

    name = forms.CharField(max_length=150, required=False)
    # A ChoiceField: anything but an IANA zone name this Python knows is refused.
    time_zone = forms.ChoiceField(
        choices=time_zone_choices,
        help_text="Quota resets happen at midnight here, and every date is shown in it.",
    )
    extended_log_archive = forms.BooleanField(
        required=False,
        label="Extended log archiving",
        help_text=(
            f"Keep request logs {settings.LOG_ARCHIVE_DAYS} days instead of "
            f"{settings.LOG_RETENTION_DAYS}; usage statistics are kept either way."
        ),
    )
    notify_quota_alerts = forms.BooleanField(
        required=False,
        label="Email me quota alerts",
        help_text="When a key or group reaches one of its alert thresholds.",
    )
    notify_low_balance = forms.BooleanField(
        required=False,
        label="Email me when my balance runs low",
        help_text="When the wallet falls below its alert threshold.",
    )

    @classmethod
    def for_user(cls, user: User, data=None) -> "ProfileForm":
        initial = {field: getattr(user, field) for field in cls.base_fields}
        return cls(data=data, initial=initial)


# --- keys, groups and access tokens --------------------------------------------------------------

USD_HELP = "US dollars, up to 6 decimals. Leave empty for no limit."


def _usd_field(label: str, help_text: str = USD_HELP) -> forms.DecimalField:
    return forms.DecimalField(
        label=label,
        required=False,
        min_value=Decimal(0),
        max_digits=18,
        decimal_places=6,
        help_text=help_text,
        widget=forms.NumberInput(attrs={"step": "0.000001", "inputmode": "decimal"}),
    )


def _count_field(label: str, help_text: str = "Leave empty for no limit.") -> forms.IntegerField:
    return forms.IntegerField(
        label=label, required=False, min_value=0, help_text=help_text,
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )  # fmt: skip


def _micros(value: Decimal | None) -> int | None:
    return None if value is None else usd_to_micros(value)


def _usd(micros: int | None) -> Decimal | None:
    return None if micros is None else micros_to_usd(micros).normalize()


class LocalDateTimeField(forms.DateTimeField):
    """A date and time typed in the user's own time zone (the form passes it)."""

    widget = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


def _in_zone(value: datetime | None, zone: ZoneInfo) -> datetime | None:
    """The wall-clock time the user typed, read in their zone (Django read it in UTC)."""
    if value is None:
        return None
    naive = timezone.make_naive(value, timezone.get_current_timezone())
    return naive.replace(tzinfo=zone)


def _local(value: datetime | None, zone: ZoneInfo) -> datetime | None:
    """An aware datetime as the naive wall-clock time of the user's zone (for initial values)."""
    return None if value is None else value.astimezone(zone).replace(tzinfo=None)


def _zone(user: User) -> ZoneInfo:
    try:
        return ZoneInfo(user.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


class LimitsForm(forms.Form):
    """The limits keys and groups share: token quota and its reset, credit limit, rates."""

    quota_tokens = _count_field("Token quota", "Prompt plus completion tokens; empty for no quota.")
    quota_reset = forms.ChoiceField(
        label="Quota resets",
        choices=QuotaReset.choices,
        initial=QuotaReset.MANUAL,
        help_text="At midnight in your time zone; weekly on Mondays, monthly on the 1st.",
    )
    credit_limit_usd = _usd_field("Credit limit (USD)")
    rpm = _count_field("Requests per minute (RPM)")
    tpm = _count_field("Tokens per minute (TPM)")
    rpd = _count_field("Requests per day (RPD)")

    def limits_kwargs(self) -> dict:
        data = self.cleaned_data
        return {
            "quota_tokens": data["quota_tokens"],
            "quota_reset": data["quota_reset"],
            "credit_limit_micros": _micros(data["credit_limit_usd"]),
            "rpm": data["rpm"],
            "tpm": data["tpm"],
            "rpd": data["rpd"],
        }

    @staticmethod
    def limits_initial(obj) -> dict:
        return {
            "quota_tokens": obj.quota_tokens,
            "quota_reset": obj.quota_reset,
            "credit_limit_usd": _usd(obj.credit_limit_micros),
            "rpm": obj.rpm,
            "tpm": obj.tpm,
            "rpd": obj.rpd,
        }


class ApiTokenForm(LimitsForm):
    """Every option of a relay key; the views pass its values to api_token_create/_update."""

    name = forms.CharField(
        max_length=100, help_text="To tell keys apart, e.g. production-web or staging-ci."
    )
    allowed_models = forms.MultipleChoiceField(
        label="Model allowlist",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked allows every model; in production prefer the few you use.",
    )
    max_cost_per_request_usd = _usd_field(
        "Per-request cap (USD)", "No single call may cost more. Empty for no cap."
    )
    expires_at = LocalDateTimeField(
        label="Expires",
        required=False,
        help_text="In your time zone; the key stops working then. Empty: never.",
    )
    group = forms.ModelChoiceField(
        queryset=TokenGroup.objects.none(), required=False, empty_label="No group"
    )
    allowed_ips = forms.CharField(
        label="IP allowlist",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="Addresses or CIDR ranges, one per line or comma-separated. Empty: any.",
    )
    field_order = [
        "name", "allowed_models", "max_cost_per_request_usd", "credit_limit_usd", "rpm", "tpm",
        "rpd", "quota_tokens", "quota_reset", "expires_at", "group", "allowed_ips",
    ]  # fmt: skip

    def __init__(
        self, *args, user: User, token: ApiToken | None = None, with_group: bool = True, **kwargs
    ) -> None:
        """with_group=False: an organization's key, which has no group (groups are personal)."""
        from catalog.selectors import models_callable

        self.zone = _zone(user)
        self.token = token
        if token is not None and "initial" not in kwargs:
            kwargs["initial"] = {
                **self.limits_initial(token),
                "name": token.name,
                "allowed_models": list(token.allowed_models or ()),
                "max_cost_per_request_usd": _usd(token.max_cost_per_request_micros),
                "expires_at": _local(token.expires_at, self.zone),
                "group": token.group_id,
                "allowed_ips": "\n".join(token.allowed_ips or ()),
            }
        super().__init__(*args, **kwargs)
        choices = [(m.model_id, f"{m.model_id} · {m.provider.name}") for m in models_callable()]
        known = {value for value, _ in choices}
        # A model no longer routed stays listed while the key allows it, so saving keeps it.
        if token is not None:
            choices += [(m, f"{m} · not available now") for m in token.allowed_models or ()
                        if m not in known]  # fmt: skip
        self.fields["allowed_models"].choices = choices
        if with_group:
            self.fields["group"].queryset = TokenGroup.objects.filter(owner=user).order_by("name")
        else:
            del self.fields["group"]
        self.fields[
            "expires_at"
        ].help_text = (
            f"In your time zone ({self.zone.key}); the key stops working then. Empty: never."
        )

    def clean_expires_at(self) -> datetime | None:
        value = _in_zone(self.cleaned_data["expires_at"], self.zone)
        current = self.token.expires_at if self.token is not None else None
        # The field shows minutes: an expiry left as it was keeps its exact instant (and an
        # expired key can be edited without moving its past expiry).
        shown = current.astimezone(self.zone).replace(second=0, microsecond=0) if current else None
        return current if value is not None and value == shown else value

    def clean_allowed_ips(self) -> list[str]:
        text = self.cleaned_data["allowed_ips"]
        return [item for item in re.split(r"[\s,]+", text) if item]

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        return {
            **self.limits_kwargs(),
            "name": data["name"],
            "allowed_models": data["allowed_models"],
            "max_cost_per_request_micros": _micros(data["max_cost_per_request_usd"]),
            "expires_at": data["expires_at"],
            **({"group": data["group"]} if "group" in self.fields else {}),
            "allowed_ips": data["allowed_ips"],
        }

    # The service's field names, and the form's field for each (its errors go there).
    FIELD_OF_PARAM = {
        "credit_limit_micros": "credit_limit_usd",
        "credit_limit": "credit_limit_usd",
        "max_cost_per_request_micros": "max_cost_per_request_usd",
        "max_cost_per_request": "max_cost_per_request_usd",
    }

    def add_service_error(self, exc) -> None:
        param = exc.extra.get("param")
        field = self.FIELD_OF_PARAM.get(param, param)
        self.add_error(field if field in self.fields else None, exc.message)


class TokenGroupForm(LimitsForm):
    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=255, required=False)
    field_order = [
        "name", "description", "quota_tokens", "quota_reset", "credit_limit_usd", "rpm", "tpm",
        "rpd",
    ]  # fmt: skip

    def __init__(self, *args, group: TokenGroup | None = None, **kwargs) -> None:
        if group is not None and "initial" not in kwargs:
            kwargs["initial"] = {
                **self.limits_initial(group),
                "name": group.name,
                "description": group.description,
            }
        super().__init__(*args, **kwargs)
        self.fields["quota_tokens"].label = "Shared token quota"
        self.fields["quota_tokens"].help_text = "Shared by every key in the group; empty for none."
        self.fields["credit_limit_usd"].help_text = "Shared by every key in the group. " + USD_HELP

    def service_kwargs(self) -> dict:
        return {
            **self.limits_kwargs(),
            "name": self.cleaned_data["name"],
            "description": self.cleaned_data["description"],
        }

    add_service_error = ApiTokenForm.add_service_error
    FIELD_OF_PARAM = ApiTokenForm.FIELD_OF_PARAM


class AccessTokenForm(forms.Form):
    """A personal access token for /api/ (Profile)."""

    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. billing-script.")
    expires_at = LocalDateTimeField(label="Expires", required=False)

    def __init__(self, *args, user: User, **kwargs) -> None:
        # Prefixed: it shares the Profile page with the settings form, which has a `name` too.
        kwargs.setdefault("prefix", "access")
        super().__init__(*args, **kwargs)
        self.zone = _zone(user)
        self.fields[
            "expires_at"
        ].help_text = f"Optional, in your time zone ({self.zone.key}). Empty: until you revoke it."

    def clean_expires_at(self) -> datetime | None:
        return _in_zone(self.cleaned_data["expires_at"], self.zone)
