import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.urls import reverse

from accounts.models import ApiToken, User
from accounts.services import audit_event_record
from billing.services import credit_grant
from tests.factories import (
    AlertFactory,
    ApiTokenFactory,
    AsyncTaskFactory,
    ChannelFactory,
    HoldFactory,
    InvitationFactory,
    MembershipFactory,
    ModelFactory,
    ProviderFactory,
    RequestLogFactory,
    TokenGroupFactory,
    TopUpFactory,
    TOTPDeviceFactory,
    UserFactory,
    WalletFactory,
    totp_token,
)

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"


def url_of(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def messages_of(response) -> list[str]:
    return [m.message for m in get_messages(response.wsgi_request)]


def login(client, user, **fields):
    data = {"username": user.email, "password": PASSWORD, **fields}
    return client.post("/admin/login/?next=/admin/", data)


def make_ledger_entry():
    return credit_grant(wallet=WalletFactory(), amount_micros=1_000_000, reason="welcome")


# Our models, each with a way to make one row; add pages only where staff may add.
OUR_MODELS = [
    ("accounts.User", UserFactory, True),
    ("accounts.Organization", lambda: MembershipFactory().organization, True),
    ("accounts.Invitation", InvitationFactory, False),
    ("accounts.TokenGroup", TokenGroupFactory, True),
    ("accounts.ApiToken", ApiTokenFactory, False),
    (
        "accounts.AuditEvent",
        lambda: audit_event_record(user=UserFactory(), kind="signed_in", detail="password"),
        False,
    ),
    ("catalog.Provider", ProviderFactory, True),
    ("catalog.Model", ModelFactory, True),
    ("catalog.Channel", ChannelFactory, True),
    ("billing.Wallet", WalletFactory, True),
    ("billing.LedgerEntry", make_ledger_entry, False),
    ("billing.Hold", HoldFactory, False),
    ("billing.TopUp", TopUpFactory, False),
    ("billing.Alert", AlertFactory, False),
    ("usage.RequestLog", RequestLogFactory, False),
    ("tasks.AsyncTask", AsyncTaskFactory, False),
]


def test_the_login_form_asks_for_a_totp_code(client):
    response = client.get("/admin/login/")

    assert response.status_code == 200
    assert 'name="otp_token"' in response.content.decode()


def test_it_logs_a_staff_user_in_with_password_and_current_totp_code(client):
    user = UserFactory(email="ops@example.com", is_staff=True)
    device = TOTPDeviceFactory(user=user)

    response = login(client, user, otp_device=device.persistent_id, otp_token=totp_token(device))

    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.session["otp_device_id"] == device.persistent_id
    assert client.get("/admin/").status_code == 200


def test_it_refuses_a_wrong_totp_code(client):
    user = UserFactory(is_staff=True)
    device = TOTPDeviceFactory(user=user)
    # Accepted now: the codes of the steps around this one (tolerance 1), with a margin.
    valid = {totp_token(device, steps_from_now=s) for s in (-2, -1, 0, 1, 2)}
    wrong = next(code for code in ("000000", "111111", "222222", "333333") if code not in valid)

    response = login(client, user, otp_device=device.persistent_id, otp_token=wrong)

    assert response.status_code == 200
    assert "Invalid token." in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/")["Location"] == "/admin/login/?next=/admin/"


def test_it_refuses_a_correct_password_without_a_totp_code(client):
    user = UserFactory(is_staff=True)
    device = TOTPDeviceFactory(user=user)

    response = login(client, user, otp_device=device.persistent_id, otp_token="")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Please enter your OTP token." in html
    # The password was right, so the form now offers the user's device.
    assert f'<option value="{device.persistent_id}" selected>authenticator</option>' in html
    assert "_auth_user_id" not in client.session


def test_it_refuses_a_staff_user_without_a_totp_device(client):
    user = UserFactory(is_staff=True, is_superuser=True)

    response = login(client, user, otp_token="123456")

    assert response.status_code == 200
    # No device to verify the code with: the form asks for one, there is none to offer.
    assert "Please select a device." in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_it_refuses_a_totp_device_of_another_user(client):
    user = UserFactory(is_staff=True)
    other_device = TOTPDeviceFactory()

    response = login(
        client,
        user,
        otp_device=other_device.persistent_id,
        otp_token=totp_token(other_device),
    )

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize("with_device", [False, True], ids=["no-device", "unverified-device"])
def test_a_password_only_session_reaches_no_admin_page(client, with_device):
    user = UserFactory(is_staff=True, is_superuser=True)
    if with_device:
        TOTPDeviceFactory(user=user)
    # Signed in by password alone (as the console login does): not verified by OTP.
    client.force_login(user)
    urls = ["/admin/", "/admin/accounts/", "/admin/password_change/"]
    urls += [url_of(model, "changelist") for model in admin.site._registry]
    urls += [url_of(User, "change", user.pk), url_of(User, "add")]

    for url in urls:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/?next="), url


def test_it_serves_the_changelist_of_every_registered_model(staff_client):
    for model in admin.site._registry:
        response = staff_client.get(url_of(model, "changelist"))
        assert response.status_code == 200, model


def test_every_one_of_our_models_is_registered():
    registered = {model._meta.label for model in admin.site._registry}

    assert {label for label, _, _ in OUR_MODELS} <= registered


@pytest.mark.parametrize(("label", "make", "addable"), OUR_MODELS, ids=[m[0] for m in OUR_MODELS])
def test_staff_see_the_changelist_add_and_change_pages_of_each_model(
    staff_client, label, make, addable
):
    obj = make()
    model = type(obj)
    assert model._meta.label == label

    changelist = staff_client.get(url_of(model, "changelist"))
    add = staff_client.get(url_of(model, "add"))
    change = staff_client.get(url_of(model, "change", obj.pk))

    assert changelist.status_code == 200
    assert url_of(model, "change", obj.pk) in changelist.content.decode()
    assert add.status_code == (200 if addable else 403)
    assert change.status_code == 200


def test_it_adds_a_user_with_a_lower_cased_email_and_a_password(staff_client):
    response = staff_client.post(
        url_of(User, "add"),
        {
            "email": "New.Person@Example.COM",
            "name": "New Person",
            "usable_password": "true",
            "password1": "a long passphrase 42",
            "password2": "a long passphrase 42",
        },
    )

    user = User.objects.get(email="new.person@example.com")
    assert response.status_code == 302
    assert response["Location"] == url_of(User, "change", user.pk)
    assert user.name == "New Person"
    assert user.check_password("a long passphrase 42")
    assert (user.is_staff, user.is_superuser) == (False, False)


def test_it_refuses_a_second_user_whose_email_differs_only_in_case(staff_client):
    UserFactory(email="taken@example.com")

    response = staff_client.post(
        url_of(User, "add"),
        {"email": "Taken@Example.com", "usable_password": "false"},
    )

    assert response.status_code == 200
    assert "A user with this email address already exists." in response.content.decode()
    assert User.objects.filter(email__iexact="taken@example.com").count() == 1


def test_it_blocks_a_user_from_the_change_form(staff_client):
    user = UserFactory(email="customer@example.com", name="Customer")

    response = staff_client.post(
        url_of(User, "change", user.pk),
        {
            "email": "customer@example.com",
            "name": "Customer",
            "role": "user",
            "time_zone": "Europe/Paris",
            "is_active": "on",
            "is_blocked": "on",
            "blocked_reason": "chargeback",
            "log_retention_days": "30",
        },
    )

    assert response.status_code == 302
    user.refresh_from_db()
    assert (user.is_blocked, user.blocked_reason, user.time_zone) == (
        True,
        "chargeback",
        "Europe/Paris",
    )
    assert user.check_password(PASSWORD)


def test_key_pages_never_show_the_digest(staff_client):
    token = ApiTokenFactory()

    changelist = staff_client.get(url_of(ApiToken, "changelist")).content.decode()
    change = staff_client.get(url_of(ApiToken, "change", token.pk)).content.decode()

    assert token.prefix in changelist
    assert token.digest not in changelist
    assert token.digest not in change


def test_the_disable_action_disables_the_selected_keys_only(staff_client):
    first, second, other = ApiTokenFactory(), ApiTokenFactory(), ApiTokenFactory()

    response = staff_client.post(
        url_of(ApiToken, "changelist"),
        {"action": "disable_keys", "_selected_action": [first.pk, second.pk]},
    )

    assert response.status_code == 302
    assert messages_of(response) == ["Disabled 2 keys."]
    statuses = dict(ApiToken.objects.values_list("pk", "status"))
    assert statuses == {first.pk: "disabled", second.pk: "disabled", other.pk: "enabled"}


def test_the_enable_action_enables_disabled_keys_but_not_revoked_ones(staff_client):
    disabled = ApiTokenFactory(status=ApiToken.Status.DISABLED)
    revoked = ApiTokenFactory(status=ApiToken.Status.REVOKED)

    response = staff_client.post(
        url_of(ApiToken, "changelist"),
        {"action": "enable_keys", "_selected_action": [disabled.pk, revoked.pk]},
    )

    assert messages_of(response) == [
        "Enabled 1 key.",
        "1 key unchanged (already enabled or revoked).",
    ]
    disabled.refresh_from_db()
    revoked.refresh_from_db()
    assert (disabled.status, revoked.status) == ("enabled", "revoked")


def test_the_revoke_action_revokes_for_good(staff_client):
    token = ApiTokenFactory()

    response = staff_client.post(
        url_of(ApiToken, "changelist"),
        {"action": "revoke_keys", "_selected_action": [token.pk]},
    )

    assert messages_of(response) == ["Revoked 1 key."]
    token.refresh_from_db()
    assert token.status == "revoked"
    assert token.revoked_at is not None


def test_keys_are_neither_added_nor_deleted_in_the_admin(staff_client):
    token = ApiTokenFactory()

    assert staff_client.get(url_of(ApiToken, "add")).status_code == 403
    assert staff_client.post(url_of(ApiToken, "delete", token.pk), {"post": "yes"}).status_code == (
        403
    )
    assert ApiToken.objects.filter(pk=token.pk).exists()
