from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models import Q
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra) -> "User":
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra) -> "User":
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra) -> "User":
        extra.update(is_staff=True, is_superuser=True, role=User.Role.ADMIN)
        return self._create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A customer or staff member; signs in with email (password, social account or passkey)."""

    class Role(models.TextChoices):
        USER = "user", "User"
        ADMIN = "admin", "Admin"

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    # Shown on the profile, changed only by staff.
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.USER)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    # A blocked user keeps the console (to see why) but every relay call answers 403.
    is_blocked = models.BooleanField(default=False)
    blocked_reason = models.CharField(max_length=255, blank=True)
    # IANA zone name; daily/weekly/monthly quota resets happen at the owner's local boundary.
    time_zone = models.CharField(max_length=64, default="UTC")
    log_retention_days = models.PositiveIntegerField(default=30)
    extended_log_archive = models.BooleanField(default=False)
    # Alert emails the owner wants (the alerts stay listed in the console either way).
    notify_quota_alerts = models.BooleanField(default=True)
    notify_low_balance = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email


class Organization(models.Model):
    """A team: members share its wallet (unified billing) within their monthly allowances."""

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=120, unique=True)
    created_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    # IANA zone name: member allowances restart at the first of the month here.
    time_zone = models.CharField(max_length=64, default="UTC")
    # Whether members (not only owners and admins) may have keys spending from the wallet.
    member_keys_enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    # Monthly spending allowance from the organization wallet, micro-USD; null = no allowance cap.
    monthly_allowance_micros = models.BigIntegerField(null=True, blank=True)
    # Spent this period plus what the member's calls in flight hold, micro-USD; counted for
    # every member (with or without an allowance) and restarted on the first of each month.
    allowance_used_micros = models.BigIntegerField(default=0)
    # First day of the period allowance_used_micros counts, in the organization's time zone.
    allowance_period_start = models.DateField(null=True, blank=True)
    # An owner or admin may stop one member's keys without removing them.
    can_create_keys = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="membership_unique"),
            models.CheckConstraint(
                condition=Q(allowance_used_micros__gte=0), name="membership_allowance_used_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class Invitation(models.Model):
    """An invitation to join an organization: emailed to one address, or a link to share (no
    email). Single use and expiring; only the token's digest is stored."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    # Blank for a shareable link: whoever opens it first (signed in) may accept it.
    email = models.EmailField(blank=True)
    role = models.CharField(max_length=10, choices=Membership.Role.choices, default="member")
    token_digest = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    declined_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Invitation of {self.email or 'a link holder'} to {self.organization}"


class QuotaReset(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"
    MANUAL = "manual", "Manual"


def default_alert_thresholds() -> list[int]:
    return [80, 100]


class LimitsMixin(models.Model):
    """Rate limits and token quota shared by keys and groups. Null means unlimited."""

    rpm = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    rpd = models.PositiveIntegerField("requests per day", null=True, blank=True)
    quota_tokens = models.BigIntegerField(null=True, blank=True)
    # Prompt + completion tokens counted against quota_tokens, holds of calls in flight included.
    quota_used_tokens = models.BigIntegerField(default=0)
    quota_reset = models.CharField(
        max_length=10, choices=QuotaReset.choices, default=QuotaReset.MANUAL
    )
    quota_last_reset_at = models.DateTimeField(null=True, blank=True)
    quota_next_reset_at = models.DateTimeField(null=True, blank=True)
    # Total credit this key/group may spend, micro-USD; null = bounded by the wallet only.
    credit_limit_micros = models.BigIntegerField(null=True, blank=True)
    # Spent plus held against credit_limit_micros, micro-USD.
    credit_used_micros = models.BigIntegerField(default=0)
    # Percentages of the quota at which the owner is alerted.
    alert_thresholds = models.JSONField(default=default_alert_thresholds, blank=True)
    # The highest threshold already alerted in this quota period (0 = none); a reset clears it.
    quota_alerted_percent = models.PositiveSmallIntegerField(default=0)

    class Meta:
        abstract = True


class TokenGroup(LimitsMixin):
    """Keys under one management unit, sharing one token quota and one credit limit."""

    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="token_groups")
    organization = models.ForeignKey(
        Organization,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="token_groups",
    )
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="token_group_owner_name_unique"),
            models.CheckConstraint(
                condition=Q(quota_used_tokens__gte=0), name="token_group_quota_used_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(credit_used_micros__gte=0), name="token_group_credit_used_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ApiToken(LimitsMixin):
    """A relay API key, shown once; only its SHA-256 digest and a display prefix are kept."""

    class Status(models.TextChoices):
        ENABLED = "enabled", "Enabled"
        DISABLED = "disabled", "Disabled"
        REVOKED = "revoked", "Revoked"

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    # Set when the key spends from an organization's wallet.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, null=True, blank=True, related_name="api_tokens"
    )
    group = models.ForeignKey(
        TokenGroup, on_delete=models.SET_NULL, null=True, blank=True, related_name="tokens"
    )
    prefix = models.CharField(
        max_length=16, help_text="Shown to identify the key, e.g. sk-AbCd1234"
    )
    digest = models.CharField(max_length=64, unique=True, editable=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ENABLED)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Public model ids this key may call; empty = every enabled model.
    allowed_models = models.JSONField(default=list, blank=True)
    # Addresses and CIDR ranges allowed to use the key; empty = any.
    allowed_ips = models.JSONField(default=list, blank=True)
    # No single call may cost more than this, micro-USD; null = no per-request cap.
    max_cost_per_request_micros = models.BigIntegerField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # A short-lived key the console's playground makes for the browser; not listed with the
    # user's keys, billed and logged like any other.
    is_playground = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "status"], name="api_token_owner_status")]
        constraints = [
            models.CheckConstraint(
                condition=Q(quota_used_tokens__gte=0), name="api_token_quota_used_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(credit_used_micros__gte=0), name="api_token_credit_used_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


class AuditEvent(models.Model):
    """Something that happened to a user's account, listed for the user in Profile.

    Append-only: written by accounts.services.audit_event_record, never edited.
    """

    class Kind(models.TextChoices):
        SIGNED_IN = "signed_in", "Signed in"
        SIGN_IN_FAILED = "sign_in_failed", "Sign-in failed"
        SIGNED_OUT = "signed_out", "Signed out"
        KEY_CREATED = "key_created", "API key created"
        KEY_REVOKED = "key_revoked", "API key revoked"
        ACCESS_TOKEN_CREATED = "access_token_created", "API access token created"
        ACCESS_TOKEN_REVOKED = "access_token_revoked", "API access token revoked"
        PASSKEY_ADDED = "passkey_added", "Passkey added"
        PASSKEY_REMOVED = "passkey_removed", "Passkey removed"
        TOTP_ENABLED = "totp_enabled", "Authenticator app enabled"
        TOTP_DISABLED = "totp_disabled", "Authenticator app disabled"
        RECOVERY_CODES_GENERATED = "recovery_codes_generated", "Recovery codes generated"
        PASSWORD_CHANGED = "password_changed", "Password changed"
        EMAIL_CHANGED = "email_changed", "Email changed"
        SOCIAL_LINKED = "social_linked", "Provider linked"
        SOCIAL_UNLINKED = "social_unlinked", "Provider unlinked"
        ORG_CREATED = "org_created", "Organization created"
        ORG_JOINED = "org_joined", "Joined an organization"
        ORG_LEFT = "org_left", "Left or removed from an organization"
        ORG_ROLE_CHANGED = "org_role_changed", "Organization role changed"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="audit_events")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    # Empty when the event did not come from a web request (a command, the admin's services).
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=255, blank=True)
    detail = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"], name="audit_event_user_created")]

    def __str__(self) -> str:
        return f"{self.user} {self.kind} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class PersonalAccessToken(models.Model):
    """A token for scripts calling the console's JSON API (/api/) as the user.

    Not a relay key: it cannot call /v1. Shown once; only its SHA-256 digest and a display prefix
    are kept.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="access_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
