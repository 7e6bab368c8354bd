from zoneinfo import available_timezones

from django import forms

from accounts.models import User


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
        help_text="Keep request logs longer than the standard 30 days.",
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
