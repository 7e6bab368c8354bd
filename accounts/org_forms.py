"""Forms of the organization pages. They parse what the user typed; the services decide."""

from decimal import Decimal

from django import forms

from accounts.forms import time_zone_choices
from accounts.models import Membership, Organization, User
from accounts.scope import Perm, Scope
from tokenbyte.errors import ApplicationError
from tokenbyte.money import micros_to_usd, usd_to_micros


class ServiceErrorMixin:
    """Shows a service's ApplicationError on the field it names (`extra["param"]`)."""

    def add_service_error(self, exc: ApplicationError) -> None:
        field = exc.extra.get("param")
        self.add_error(field if field in self.fields else None, exc.message)


class OrganizationCreateForm(ServiceErrorMixin, forms.Form):
    name = forms.CharField(max_length=120, label="Organization name")
    time_zone = forms.ChoiceField(
        choices=time_zone_choices,
        help_text="Members' monthly allowances restart on the first of the month here.",
    )

    def __init__(self, *args, user: User, **kwargs) -> None:
        kwargs.setdefault("initial", {"time_zone": user.time_zone})
        super().__init__(*args, **kwargs)


class OrganizationSettingsForm(ServiceErrorMixin, forms.Form):
    name = forms.CharField(max_length=120, label="Organization name")
    time_zone = forms.ChoiceField(
        choices=time_zone_choices,
        help_text="Members' monthly allowances restart on the first of the month here.",
    )
    member_keys_enabled = forms.BooleanField(
        required=False,
        label="Members may create keys",
        help_text=(
            "Members' keys spend from the organization's wallet within their allowances. "
            "Unticked, members' keys stop working; owners' and admins' keys always work."
        ),
    )

    @classmethod
    def for_organization(cls, organization: Organization, data=None) -> "OrganizationSettingsForm":
        initial = {field: getattr(organization, field) for field in cls.base_fields}
        return cls(data=data, initial=initial)


def _role_choices(scope: Scope) -> list[tuple[str, str]]:
    # Only owners hand out the roles above member (the service refuses it to admins too).
    if scope.can(Perm.SET_ROLE):
        return list(Membership.Role.choices)
    return [(Membership.Role.MEMBER, Membership.Role.MEMBER.label)]


class InvitationForm(ServiceErrorMixin, forms.Form):
    """One form for both kinds: by email (email required) or a shareable link (no email).

    Rendered twice on the organization page, with the prefixes "email" and "link"."""

    email = forms.EmailField(required=False, label="Email address")
    role = forms.ChoiceField(choices=Membership.Role.choices)

    def __init__(self, *args, scope: Scope, link: bool, **kwargs) -> None:
        kwargs.setdefault("prefix", "link" if link else "email")
        super().__init__(*args, **kwargs)
        self.link = link
        self.fields["role"].choices = _role_choices(scope)
        self.fields["role"].initial = Membership.Role.MEMBER
        if link:
            del self.fields["email"]
        else:
            self.fields["email"].required = True

    def service_kwargs(self) -> dict:
        return {"email": self.cleaned_data.get("email", ""), "role": self.cleaned_data["role"]}


class MemberRoleForm(ServiceErrorMixin, forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class MemberAllowanceForm(ServiceErrorMixin, forms.Form):
    allowance_usd = forms.DecimalField(
        label="Monthly allowance (USD)",
        required=False,
        min_value=Decimal(0),
        max_digits=18,
        decimal_places=6,
        help_text="What this member may spend from the wallet each month. Empty: no cap.",
        widget=forms.NumberInput(attrs={"step": "0.000001", "inputmode": "decimal"}),
    )

    @classmethod
    def for_membership(cls, membership: Membership, data=None) -> "MemberAllowanceForm":
        micros = membership.monthly_allowance_micros
        usd = None if micros is None else micros_to_usd(micros).normalize()
        # normalize() writes 100 as 1E+2; the input wants plain digits.
        initial = {"allowance_usd": None if usd is None else f"{usd:f}"}
        return cls(data=data, initial=initial)

    def allowance_micros(self) -> int | None:
        value = self.cleaned_data["allowance_usd"]
        return None if value is None else usd_to_micros(value)


class MemberKeysForm(forms.Form):
    can_create_keys = forms.TypedChoiceField(
        choices=[("yes", "Allow keys"), ("no", "Stop keys")],
        coerce=lambda value: value == "yes",
    )
