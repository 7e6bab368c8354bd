"""TokenByte settings, read from the environment.

With no environment at all this is the embedded default that `make run` serves: SQLite, local-memory
cache, in-memory channel layer, eager Celery, email to the console. Production sets DEBUG=0 and the
variables that `_require` names; a missing one stops start-up with a message that says which.
"""

import base64
import hashlib
import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from tasks.schedule import PERIODIC_JOBS

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: str) -> bool:
    return env(name, default).strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: str) -> int:
    return int(env(name, default))


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


DEBUG = envbool("DEBUG", "true")


def _require(name: str, embedded_default: str) -> str:
    """The variable's value; in production (DEBUG off) it must be set."""
    value = env(name)
    if value:
        return value
    if DEBUG:
        return embedded_default
    raise ImproperlyConfigured(
        f"Missing required environment variable {name} (it must be set when DEBUG is off)."
    )


def database_from_url(url: str) -> dict:
    """Django DATABASES entry from a `postgres://` or `sqlite:///` URL."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///relative.db has the path "/relative.db"; sqlite:////abs.db has "//abs.db".
        name = unquote(parts.path)[1:]
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name if os.path.isabs(name) else str(BASE_DIR / name),
            # A busy relay writes from several threads; wait for the lock instead of failing.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": envint("DB_CONN_MAX_AGE", "0"),
            "OPTIONS": options,
        }
    raise ImproperlyConfigured(f"DATABASE_URL has an unsupported scheme: {parts.scheme!r}")


SECRET_KEY = _require("SECRET_KEY", "embedded-insecure-secret-key-for-local-use-only")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS") or (
    ["127.0.0.1", "localhost", "[::1]", "testserver"]
    if DEBUG
    else _require("ALLOWED_HOSTS", "").split(",")
)
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")
SITE_URL = env("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
# The name receipts and their emails are issued in.
SITE_NAME = env("SITE_NAME", "TokenByte")
# Lifetime of the short-lived relay key the console's playground gets for the browser.
PLAYGROUND_KEY_TTL_SECONDS = envint("PLAYGROUND_KEY_TTL_SECONDS", "3600")

INSTALLED_APPS = [
    "tokenbyte.apps.TokenByteAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.github",
    "allauth.socialaccount.providers.discord",
    "allauth.socialaccount.providers.openid_connect",
    "allauth.mfa",
    "tokenbyte",
    "accounts",
    "catalog",
    "billing",
    "usage",
    "relay",
    "mockupstream",
    "fakestripe",
    "tasks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "tokenbyte.urls"
ASGI_APPLICATION = "tokenbyte.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tokenbyte.context_processors.console",
            ],
        },
    },
]

DATABASES = {"default": database_from_url(_require("DATABASE_URL", "sqlite:///db.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = _require("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "tb",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "/"

# allauth: email is the login; passkeys through allauth.mfa (WebAuthn).
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = env("ACCOUNT_EMAIL_VERIFICATION", "mandatory")
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "accounts.adapters.SocialAccountAdapter"
# Off for invite-only platforms: the sign-up form (and sign-up through a social provider) refuse.
SIGNUP_ENABLED = envbool("SIGNUP_ENABLED", "true")
# Credit a new account starts with, USD (one ledger grant, once per user), so a new user can try
# the relay before topping up: $1 in the embedded default, none in production unless set.
SIGNUP_CREDIT_USD = env("SIGNUP_CREDIT_USD", "1" if DEBUG else "0")
ACCOUNT_LOGIN_BY_CODE_ENABLED = envbool("ACCOUNT_LOGIN_BY_CODE_ENABLED", "false")
# Failed sign-ins: at most LOGIN_FAILED_PER_IP a minute from one address (any account) and
# LOGIN_FAILED_PER_ACCOUNT per LOGIN_LOCKOUT_SECONDS on one account; then allauth answers
# "Too many failed login attempts. Try again later." A success does not wipe the counters.
LOGIN_FAILED_PER_IP = envint("LOGIN_FAILED_PER_IP", "10")
LOGIN_FAILED_PER_ACCOUNT = envint("LOGIN_FAILED_PER_ACCOUNT", "5")
LOGIN_LOCKOUT_SECONDS = envint("LOGIN_LOCKOUT_SECONDS", "300")
ACCOUNT_RATE_LIMITS = {
    "login_failed": (
        f"{LOGIN_FAILED_PER_IP}/m/ip,{LOGIN_FAILED_PER_ACCOUNT}/{LOGIN_LOCKOUT_SECONDS}s/key"
    ),
}
# Proxies you run in front of the console (the client address of rate limits and the audit list).
ALLAUTH_TRUSTED_PROXY_COUNT = envint("ALLAUTH_TRUSTED_PROXY_COUNT", "0")
MFA_ADAPTER = "accounts.adapters.MFAAdapter"
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes", "webauthn"]
MFA_TOTP_ISSUER = env("OTP_TOTP_ISSUER", "TokenByte")
# Passkeys: sign in with a passkey alone (allauth requires user verification, so it is two
# factors). Signing up with a passkey instead of a password is optional: allauth then verifies
# the address by a code typed in, not a link (it needs the code to finish the sign-up).
MFA_PASSKEY_LOGIN_ENABLED = True
MFA_PASSKEY_SIGNUP_ENABLED = envbool("MFA_PASSKEY_SIGNUP_ENABLED", "false")
ACCOUNT_EMAIL_VERIFICATION_BY_CODE_ENABLED = MFA_PASSKEY_SIGNUP_ENABLED
# A passkey belongs to one domain (the relying party id): empty = the host of the request
# (localhost in development; Chromium refuses an IP address). Set it to the site's domain in
# production: browsers offer a passkey only there and on its subdomains, and the id should not
# follow whatever Host header reached the server.
WEBAUTHN_RP_ID = env("WEBAUTHN_RP_ID")
WEBAUTHN_RP_NAME = env("WEBAUTHN_RP_NAME", "TokenByte")
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = DEBUG
SOCIALACCOUNT_PROVIDERS: dict = {}
if env("GITHUB_CLIENT_ID"):
    SOCIALACCOUNT_PROVIDERS["github"] = {
        "APPS": [{"client_id": env("GITHUB_CLIENT_ID"), "secret": env("GITHUB_CLIENT_SECRET")}]
    }
if env("DISCORD_CLIENT_ID"):
    SOCIALACCOUNT_PROVIDERS["discord"] = {
        "APPS": [{"client_id": env("DISCORD_CLIENT_ID"), "secret": env("DISCORD_CLIENT_SECRET")}]
    }
if env("OIDC_CLIENT_ID"):
    SOCIALACCOUNT_PROVIDERS["openid_connect"] = {
        "APPS": [
            {
                "provider_id": env("OIDC_PROVIDER_ID", "oidc"),
                "name": env("OIDC_NAME", "OpenID Connect"),
                "client_id": env("OIDC_CLIENT_ID"),
                "secret": env("OIDC_CLIENT_SECRET"),
                # server_url: the issuer; allauth reads its .well-known/openid-configuration.
                "settings": {"server_url": env("OIDC_SERVER_URL"), "oauth_pkce_enabled": True},
            }
        ]
    }

OTP_TOTP_ISSUER = env("OTP_TOTP_ISSUER", "TokenByte")
# Staff must not read each other's TOTP secrets in the admin.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True

# /api/: the console's JSON API, for the browser (session) and scripts (personal access tokens).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.AccessTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "tokenbyte.api.Pagination",
    "EXCEPTION_HANDLER": "tokenbyte.api.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "TokenByte API",
    "DESCRIPTION": "What the console reads and writes. Authenticate with a personal access token "
    "(Authorization: Bearer tbp_…, made in Profile) or a signed-in session.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/",
    "COMPONENT_SPLIT_REQUEST": True,
    # The docs page works offline: Swagger UI is served from drf-spectacular-sidecar's files.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tokenbyte.api.schema_document_authentication_errors",
    ],
    # Choice sets that share a field name get a name each (else a hash suffix and a warning).
    "ENUM_NAME_OVERRIDES": {
        "LedgerEntryKindEnum": "billing.models.LedgerEntry.Kind",
        "AlertKindEnum": "billing.models.Alert.Kind",
        "TopUpStatusEnum": "billing.models.TopUp.Status",
        "TaskKindEnum": "tasks.models.AsyncTask.Kind",
        "TaskStatusEnum": "tasks.models.AsyncTask.Status",
        "ApiTokenStatusEnum": "accounts.models.ApiToken.Status",
        "QuotaResetEnum": "accounts.models.QuotaReset",
        "MembershipRoleEnum": "accounts.models.Membership.Role",
        "InvitationStateEnum": "accounts.org_api.INVITATION_STATES",
        "InvitationKindEnum": "accounts.org_api.INVITATION_KINDS",
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Stored media of async jobs (Django's storage API; local files unless STORAGES says otherwise).
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(BASE_DIR / ".tmp" / "media")))
MEDIA_URL = "media/"
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []

# Email: console in the embedded default, SMTP when EMAIL_HOST is set.
EMAIL_HOST = env("EMAIL_HOST")
EMAIL_PORT = envint("EMAIL_PORT", "587")
EMAIL_HOST_USER = env("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", "false")
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "TokenByte <noreply@tokenbyte.local>")

# Stripe: the embedded default talks to the bundled fake Stripe server.
STRIPE_SECRET_KEY = _require("STRIPE_SECRET_KEY", "sk_test_embedded_fake")
STRIPE_WEBHOOK_SECRET = _require("STRIPE_WEBHOOK_SECRET", "whsec_embedded_fake")
STRIPE_API_BASE = env("STRIPE_API_BASE", "" if not DEBUG else "http://127.0.0.1:12111")
# Card top-ups: USD amounts as decimal strings (parsed with Decimal where used, never float).
TOPUP_MIN_USD = env("TOPUP_MIN_USD", "5")
TOPUP_MAX_USD = env("TOPUP_MAX_USD", "10000")
# The wallet page's preset buttons, comma-separated.
TOPUP_PRESETS_USD = env("TOPUP_PRESETS_USD", "10,20,50,100")


def _embedded_fernet_key() -> str:
    # Embedded mode only: derive a stable key from SECRET_KEY so a restart can still decrypt.
    return base64.urlsafe_b64encode(hashlib.sha256(SECRET_KEY.encode()).digest()).decode()


# Comma-separated Fernet keys; the first encrypts, all decrypt (key rotation).
FIELD_ENCRYPTION_KEYS = envlist("FIELD_ENCRYPTION_KEY") or [
    _require("FIELD_ENCRYPTION_KEY", _embedded_fernet_key())
]

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_TIMEZONE = "UTC"
# A delivered job is acknowledged once it ran, so a worker that dies mid-job leaves it to
# another (billing settles each job once, on its request id).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# How long Redis waits for an acknowledgement before handing a job to another worker (longer
# than any job's time limit), and how often workers look for such jobs.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": envint("CELERY_VISIBILITY_TIMEOUT_SECONDS", "1200"),
    "unacked_restore_interval": envint("CELERY_UNACKED_RESTORE_SECONDS", "10"),
    "unacked_restore_throttle": 1,
}
# Async jobs (POST /v1/tasks): fail (and release) one unfinished this long after its submit;
# runs at most this many times (a worker dying mid-job counts); media kept this long.
TASK_DEADLINE_SECONDS = envint("TASK_DEADLINE_SECONDS", "900")
TASK_MAX_ATTEMPTS = envint("TASK_MAX_ATTEMPTS", "3")
# A run that every channel failed (429, 5xx, timeout) is retried after this, doubling each time.
TASK_RETRY_SECONDS = float(env("TASK_RETRY_SECONDS", "5"))
TASK_MEDIA_TTL_SECONDS = envint("TASK_MEDIA_TTL_SECONDS", "86400")

# Relay
RELAY_MAX_BODY_BYTES = envint("RELAY_MAX_BODY_BYTES", str(10 * 1024 * 1024))
# Multipart uploads (images/edits, audio/transcriptions and translations), as OpenAI's 25 MB.
RELAY_MAX_UPLOAD_BYTES = envint("RELAY_MAX_UPLOAD_BYTES", str(25 * 1024 * 1024))
# Enforced by the HTTP protocol in relay/server.py (uvicorn --http relay.server:RelayHttpProtocol).
RELAY_MAX_HEADER_BYTES = envint("RELAY_MAX_HEADER_BYTES", str(64 * 1024))
RELAY_HEADER_TIMEOUT_SECONDS = envint("RELAY_HEADER_TIMEOUT_SECONDS", "10")
RELAY_BODY_TIMEOUT_SECONDS = envint("RELAY_BODY_TIMEOUT_SECONDS", "30")
if min(RELAY_MAX_HEADER_BYTES, RELAY_HEADER_TIMEOUT_SECONDS, RELAY_BODY_TIMEOUT_SECONDS) <= 0:
    raise ImproperlyConfigured(
        "RELAY_MAX_HEADER_BYTES, RELAY_HEADER_TIMEOUT_SECONDS and RELAY_BODY_TIMEOUT_SECONDS "
        "must be positive."
    )
RELAY_KEY_CACHE_SECONDS = envint("RELAY_KEY_CACHE_SECONDS", "1")
RELAY_CATALOG_CACHE_SECONDS = envint("RELAY_CATALOG_CACHE_SECONDS", "5")
# Off by default: only behind a proxy you run, e.g. RELAY_TRUSTED_PROXY_HEADER=X-Forwarded-For.
RELAY_TRUSTED_PROXY_HEADER = env("RELAY_TRUSTED_PROXY_HEADER")
RELAY_MAX_ATTEMPTS = envint("RELAY_MAX_ATTEMPTS", "3")
RELAY_RETRY_BACKOFF_MS = envint("RELAY_RETRY_BACKOFF_MS", "100")
# A hold lives at most this long, however long its call runs (then the sweep releases it).
RELAY_HOLD_TTL_SECONDS = envint("RELAY_HOLD_TTL_SECONDS", "3600")
# Within that, a hold is a lease its relay process renews every heartbeat while the call (or its
# settlement, in the outbox) is pending: a process that dies leaves holds the sweep releases
# within a lease and the sweep's interval (tasks/schedule.py): under a minute by default.
RELAY_HOLD_LEASE_SECONDS = envint("RELAY_HOLD_LEASE_SECONDS", "40")
RELAY_HOLD_HEARTBEAT_SECONDS = envint("RELAY_HOLD_HEARTBEAT_SECONDS", "10")
# A settlement the database cannot take is retried this long, then written to the outbox folder
# (local to the host; every relay process there drains it when the database is back).
RELAY_SETTLE_RETRY_SECONDS = float(env("RELAY_SETTLE_RETRY_SECONDS", "10"))
RELAY_OUTBOX_DIR = env("RELAY_OUTBOX_DIR", str(BASE_DIR / "var" / "settlement-outbox"))
# The upstream HTTP client: aiohttp (built in, fastest: see bench/), or the dotted path of a
# module with the same send() and close_clients() (the benchmark's bench.upstream_httpx).
RELAY_UPSTREAM_CLIENT = env("RELAY_UPSTREAM_CLIENT", "aiohttp")
if RELAY_UPSTREAM_CLIENT != "aiohttp" and not (
    "." in RELAY_UPSTREAM_CLIENT
    and all(part.isidentifier() for part in RELAY_UPSTREAM_CLIENT.split("."))
):
    raise ImproperlyConfigured(
        "RELAY_UPSTREAM_CLIENT must be aiohttp or a module's dotted path, such as "
        f"bench.upstream_httpx (not {RELAY_UPSTREAM_CLIENT!r})."
    )
RELAY_DB_THREADS = envint("RELAY_DB_THREADS", "8")
# PostgreSQL: holds and settlements through SQL functions on an async pool (off = the ORM path).
RELAY_SQL_FAST_PATH = envbool("RELAY_SQL_FAST_PATH", "true")
# Connections per relay process. Few on purpose: one event loop needs no more than a handful,
# and more of them only queue on the row locks of a busy wallet inside PostgreSQL, which costs
# far more there than waiting in the relay (bench: 4 beat 10 by ~10-15 % at 16 and 64 calls).
RELAY_DB_POOL_SIZE = envint("RELAY_DB_POOL_SIZE", "4")
RELAY_CHANNEL_FAILURE_WINDOW_SECONDS = envint("RELAY_CHANNEL_FAILURE_WINDOW_SECONDS", "60")
RELAY_CHANNEL_COOLDOWN_AFTER = envint("RELAY_CHANNEL_COOLDOWN_AFTER", "3")
RELAY_CHANNEL_COOLDOWN_SECONDS = envint("RELAY_CHANNEL_COOLDOWN_SECONDS", "30")
RELAY_CHANNEL_DISABLE_AFTER = envint("RELAY_CHANNEL_DISABLE_AFTER", "10")
# Rate limits (RPM/TPM/RPD): in Redis when REDIS_URL is set (shared by all relay processes),
# otherwise in the process. The window scale shortens every window (a minute becomes
# 60 × scale seconds): for tests and demos only, keep 1 in production.
RELAY_RATE_WINDOW_SCALE = float(env("RELAY_RATE_WINDOW_SCALE", "1"))
if not 0 < RELAY_RATE_WINDOW_SCALE <= 1:
    raise ImproperlyConfigured("RELAY_RATE_WINDOW_SCALE must be in (0, 1].")
# Periodic jobs (hold sweep, channel probe, quota resets) run in the relay process when there
# is no Celery beat.
RELAY_INPROCESS_SCHEDULER = envbool("RELAY_INPROCESS_SCHEDULER", "false" if REDIS_URL else "true")
MOCK_UPSTREAM_URL = env("MOCK_UPSTREAM_URL", "http://127.0.0.1:8001/v1")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    # httpx logs every upstream URL at INFO; a Gemini URL can carry a key.
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

if not DEBUG:
    SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", "true")
    CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", "true")

CELERY_BEAT_SCHEDULE = {
    job.name: {"task": job.task, "schedule": job.seconds} for job in PERIODIC_JOBS
}

# Request logs are kept this many days (a user's own window, set by staff, may differ); users who
# turned on extended archiving in Profile keep theirs LOG_ARCHIVE_DAYS, in the same table (so
# Logs, the API and CSV export still show them). Usage statistics come from rollups, kept for good.
LOG_RETENTION_DAYS = envint("LOG_RETENTION_DAYS", "30")
LOG_ARCHIVE_DAYS = envint("LOG_ARCHIVE_DAYS", "365")
