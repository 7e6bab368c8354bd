from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from accounts.models import (
    ApiToken,
    AuditEvent,
    Invitation,
    Membership,
    Organization,
    TokenGroup,
    User,
)
from accounts.services import (
    LIMIT_COUNTERS,
    api_token_set_group,
    api_token_set_status,
    limits_save,
    quota_schedule,
    user_time_zone_changed,
)
from billing.services import quota_reset
from tokenbyte.admin_site import ViewOnlyAdmin
from tokenbyte.errors import ApplicationError
from tokenbyte.money import format_usd


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _usd_or_unlimited(micros: int | None) -> str:
    return "unlimited" if micros is None else format_usd(micros)


def _clean_email(form: forms.ModelForm) -> str:
    # UserManager stores emails lower-cased: "Ann@x.com" and "ann@x.com" are one account.
    email = User.objects.normalize_email(form.cleaned_data["email"]).lower()
    others = User.objects.filter(email__iexact=email)
    if form.instance.pk is not None:
        others = others.exclude(pk=form.instance.pk)
    if others.exists():
        raise forms.ValidationError("A user with this email address already exists.")
    return email


class UserCreationAdminForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email",)

    def clean_email(self) -> str:
        return _clean_email(self)


class UserChangeAdminForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"

    def clean_email(self) -> str:
        return _clean_email(self)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    form = UserChangeAdminForm
    add_form = UserCreationAdminForm
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("name", "role", "time_zone")}),
        ("Relay access", {"fields": ("is_active", "is_blocked", "blocked_reason")}),
        ("Logs", {"fields": ("log_retention_days", "extended_log_archive")}),
        ("Notifications", {"fields": ("notify_quota_alerts", "notify_low_balance")}),
        (
            "Staff permissions",
            {"fields": ("is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "name", "usable_password", "password1", "password2"),
            },
        ),
    )
    list_display = (
        "email",
        "name",
        "role",
        "is_staff",
        "is_active",
        "is_blocked",
        "date_joined",
        "last_login",
    )
    list_filter = ("is_staff", "is_superuser", "is_active", "is_blocked", "role", "date_joined")
    search_fields = ("email", "name")
    search_help_text = "Email or name"
    ordering = ("email",)
    readonly_fields = ("last_login", "date_joined")

    def save_model(self, request: HttpRequest, obj: User, form: forms.ModelForm, change: bool):
        super().save_model(request, obj, form, change)
        if change and "time_zone" in form.changed_data:
            # Scheduled quota resets follow the owner's local midnight.
            user_time_zone_changed(user=obj)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ("user",)
    fields = (
        "user",
        "role",
        "monthly_allowance_micros",
        "allowance_used_micros",
        "allowance_period_start",
        "can_create_keys",
        "created_at",
    )
    # Counters for billing alone: every hold and settlement of the member's keys moves them, so
    # an edit here would race a call. (A membership deleted here stops the member's organization
    # keys on the relay too: their key lookup finds no membership.)
    readonly_fields = ("allowance_used_micros", "allowance_period_start", "created_at")


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created_by", "member_count", "time_zone", "created_at")
    list_select_related = ("created_by",)
    list_filter = ("created_at",)
    search_fields = ("name", "slug", "=created_by__email")
    search_help_text = "Name, slug or the creator's exact email"
    date_hierarchy = "created_at"
    prepopulated_fields = {"slug": ("name",)}
    raw_id_fields = ("created_by",)
    inlines = (MembershipInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        return super().get_queryset(request).annotate(member_count=Count("memberships"))

    @admin.display(description="members", ordering="member_count")
    def member_count(self, obj: Organization) -> int:
        return obj.member_count


@admin.register(Invitation)
class InvitationAdmin(ViewOnlyAdmin):
    """Invitations are created and emailed from the console; the token digest is never shown."""

    list_display = (
        "email",
        "organization",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "declined_at",
        "revoked_at",
    )
    list_select_related = ("organization", "invited_by")
    list_filter = ("role", "created_at", "accepted_at", "declined_at", "revoked_at")
    search_fields = ("email", "organization__name", "=organization__slug")
    date_hierarchy = "created_at"
    fields = (
        "organization",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "declined_at",
        "revoked_at",
    )


LIMIT_FIELDSETS = (
    ("Rate limits", {"fields": ("rpm", "tpm", "rpd")}),
    (
        "Token quota",
        {
            "fields": (
                "quota_tokens",
                "quota_used_tokens",
                "quota_reset",
                "quota_last_reset_at",
                "quota_next_reset_at",
                "alert_thresholds",
                "quota_alerted_percent",
            )
        },
    ),
)


class LimitsAdminMixin:
    """Saves only what the form changed, through the service: the counters the relay moves
    concurrently are never written from the copy the form was built on, and a changed reset
    period reschedules the next reset. Adds the manual quota reset action."""

    limits_noun = "key"

    def save_model(self, request: HttpRequest, obj, form: forms.ModelForm, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            quota_schedule(obj=obj)
            return
        limits_save(obj=obj, fields=[f for f in form.changed_data if f != "group"])

    @admin.action(description="Reset the token quota now", permissions=["change"])
    def reset_quotas(self, request: HttpRequest, queryset: QuerySet) -> None:
        noun = self.limits_noun
        count = 0
        for obj in queryset.filter(quota_tokens__isnull=False).order_by("pk"):
            quota_reset(obj=obj)
            count += 1
        skipped = queryset.filter(quota_tokens__isnull=True).count()
        if count:
            self.message_user(
                request, f"Reset the token quota of {_plural(count, noun)}.", messages.SUCCESS
            )
        if skipped:
            verb = "has" if skipped == 1 else "have"
            self.message_user(
                request, f"{_plural(skipped, noun)} {verb} no token quota.", messages.WARNING
            )


@admin.register(TokenGroup)
class TokenGroupAdmin(LimitsAdminMixin, admin.ModelAdmin):
    limits_noun = "group"
    list_display = (
        "name",
        "owner",
        "organization",
        "key_count",
        "quota_tokens",
        "quota_used_tokens",
        "credit_limit",
        "credit_used",
        "created_at",
    )
    list_select_related = ("owner", "organization")
    list_filter = ("quota_reset", "created_at")
    search_fields = ("name", "=owner__email", "=organization__slug")
    search_help_text = "Group name, the owner's exact email or the organization's slug"
    raw_id_fields = ("owner", "organization")
    readonly_fields = (*sorted(LIMIT_COUNTERS), "created_at")
    actions = ("reset_quotas",)
    fieldsets = (
        (None, {"fields": ("name", "description", "owner", "organization", "created_at")}),
        *LIMIT_FIELDSETS,
        ("Credit", {"fields": ("credit_limit_micros", "credit_used_micros")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[TokenGroup]:
        return super().get_queryset(request).annotate(key_count=Count("tokens"))

    @admin.display(description="keys", ordering="key_count")
    def key_count(self, obj: TokenGroup) -> int:
        return obj.key_count

    @admin.display(description="credit limit", ordering="credit_limit_micros")
    def credit_limit(self, obj: TokenGroup) -> str:
        return _usd_or_unlimited(obj.credit_limit_micros)

    @admin.display(description="credit used", ordering="credit_used_micros")
    def credit_used(self, obj: TokenGroup) -> str:
        return format_usd(obj.credit_used_micros)


class ApiTokenAdminForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("group",)  # the fieldsets below add the rest

    def clean_group(self) -> TokenGroup | None:
        group = self.cleaned_data.get("group")
        if group is not None and group.owner_id != self.instance.owner_id:
            raise forms.ValidationError("The group belongs to someone else.")
        return group


@admin.register(ApiToken)
class ApiTokenAdmin(LimitsAdminMixin, admin.ModelAdmin):
    """Keys are created where the plaintext can be shown once (console, create_api_key).

    The digest is never displayed. Status changes go through the actions, which call the service
    (revoked is final); keys are revoked rather than deleted so logs and holds keep their key.
    """

    list_display = (
        "name",
        "prefix",
        "owner",
        "organization",
        "group",
        "status",
        "expires_at",
        "last_used_at",
        "created_at",
    )
    list_select_related = ("owner", "organization", "group")
    list_filter = ("status", "quota_reset", "created_at", "last_used_at")
    search_fields = ("name", "^prefix", "=owner__email")
    search_help_text = "Key name, key prefix (sk-…) or the owner's exact email"
    raw_id_fields = ("owner", "organization", "group")
    form = ApiTokenAdminForm
    # Allowlists are checked by api_token_create's cleaning rules; the console edits them.
    readonly_fields = (
        "prefix",
        "owner",
        "organization",
        "status",
        "allowed_models",
        "allowed_ips",
        *sorted(LIMIT_COUNTERS),
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "prefix", "owner", "organization", "group")}),
        (
            "Status",
            {"fields": ("status", "expires_at", "revoked_at", "last_used_at", "created_at")},
        ),
        ("Allowlists", {"fields": ("allowed_models", "allowed_ips")}),
        *LIMIT_FIELDSETS,
        (
            "Credit",
            {
                "fields": (
                    "max_cost_per_request_micros",
                    "credit_limit_micros",
                    "credit_used_micros",
                )
            },
        ),
    )
    actions = ("disable_keys", "enable_keys", "revoke_keys", "reset_quotas")

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:
        if change and "group" in form.changed_data:
            api_token_set_group(token=obj, group=form.cleaned_data["group"])
        super().save_model(request, obj, form, change)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        return False

    def _set_status(
        self, request: HttpRequest, queryset: QuerySet[ApiToken], status: str, verb: str
    ) -> None:
        changed = unchanged = 0
        for token in queryset:
            try:
                if api_token_set_status(token=token, status=status):
                    changed += 1
                else:
                    unchanged += 1
            except ApplicationError as exc:
                self.message_user(request, f"{token}: {exc.message}", messages.ERROR)
        if changed:
            self.message_user(request, f"{verb} {_plural(changed, 'key')}.", messages.SUCCESS)
        if unchanged:
            self.message_user(
                request,
                f"{_plural(unchanged, 'key')} unchanged (already {status} or revoked).",
                messages.WARNING,
            )

    @admin.action(description="Disable selected keys", permissions=["change"])
    def disable_keys(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        self._set_status(request, queryset, ApiToken.Status.DISABLED, "Disabled")

    @admin.action(description="Enable selected keys", permissions=["change"])
    def enable_keys(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        self._set_status(request, queryset, ApiToken.Status.ENABLED, "Enabled")

    @admin.action(description="Revoke selected keys (final)", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        self._set_status(request, queryset, ApiToken.Status.REVOKED, "Revoked")


@admin.register(AuditEvent)
class AuditEventAdmin(ViewOnlyAdmin):
    """What happened to each account (sign-ins, keys, authenticators): written by the services."""

    list_display = ("created_at", "user", "kind", "ip", "detail")
    list_select_related = ("user",)
    list_filter = ("kind", "created_at")
    search_fields = ("=user__email", "=ip", "detail")
    search_help_text = "The user's exact email, an exact IP address or the detail"
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = ("created_at", "user", "kind", "ip", "user_agent", "detail")
