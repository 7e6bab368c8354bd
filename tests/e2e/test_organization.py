"""Organizations in a real browser: an owner creates one and invites a colleague by email; the
colleague opens the emailed link signed out, creates an account on the way (sign-up otherwise
closed), joins and finds the organization in the switcher; the owner sets the colleague's
allowance, shares a link, and removes a member."""

import re

import pytest
from playwright.sync_api import expect

from accounts.models import Invitation, Membership, Organization
from accounts.services import invitation_token
from tests.e2e.helpers import PASSWORD, shoot
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def eager_tasks():
    """Queued Celery tasks (the invitation email) run in the live server's thread."""
    from tokenbyte.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


def sign_in(page, site: str, email: str, password: str = PASSWORD) -> None:
    page.goto("/accounts/login/?next=/organization/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{site}/organization/")


def member_row(page, email: str):
    membership = Membership.objects.get(user__email=email)
    return page.locator(f"#member-{membership.pk}")


@pytest.mark.usefixtures("eager_tasks")
def test_an_owner_invites_a_colleague_who_signs_up_on_the_way_and_joins(
    page, site, browser, verified_user, mailoutbox, settings
):
    settings.SITE_URL = site
    settings.SIGNUP_ENABLED = False
    sign_in(page, site, verified_user.email)

    # Personal scope: no organization yet; create one.
    expect(page.get_by_role("heading", name="Organizations", level=1)).to_be_visible()
    expect(page.get_by_text("You are not in any organization yet")).to_be_visible()
    shoot(page, "organizations-none")
    create = page.get_by_role("region", name="Create an organization")
    create.get_by_label("Organization name").fill("Acme Research")
    create.get_by_label("Time zone").select_option("Europe/Paris")
    create.get_by_role("button", name="Create organization").click()
    expect(page.get_by_role("heading", name="Acme Research", level=1)).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Acme Research is created")
    org = Organization.objects.get(name="Acme Research")
    assert org.time_zone == "Europe/Paris"

    # Invite a colleague by email.
    invite = page.locator("form", has=page.get_by_role("heading", name="Invite by email"))
    invite.get_by_label("Email address").fill("colleague@example.com")
    invite.get_by_label("Role").select_option("member")
    invite.get_by_role("button", name="Send invitation").click()
    expect(page.get_by_role("status")).to_contain_text(
        "An invitation is on its way to colleague@example.com."
    )
    invitation = Invitation.objects.get(email="colleague@example.com")
    row = page.locator(f"#invitation-{invitation.pk}")
    expect(row).to_contain_text("colleague@example.com")
    expect(row).to_contain_text("Pending")
    shoot(page, "organization-owner")

    (message,) = mailoutbox
    assert message.to == ["colleague@example.com"]
    (link,) = re.findall(
        rf"{re.escape(site)}/organization/invitations/inv_[0-9a-f]+/", message.body
    )
    assert link.endswith(f"/{invitation_token(invitation)}/")

    # The colleague, in a browser of their own, signed out.
    context = browser.new_context(viewport=page.viewport_size, base_url=site)
    colleague = context.new_page()
    try:
        colleague.goto(link)
        expect(colleague.get_by_role("heading", name="Join Acme Research")).to_be_visible()
        expect(colleague.get_by_text("owner@example.com invites you to join")).to_be_visible()
        shoot(colleague, "invitation-signed-out")
        colleague.get_by_role("link", name="Create an account").click()
        expect(colleague.get_by_label("Email")).to_have_value("colleague@example.com")
        colleague.get_by_label(re.compile(r"^Password:?$")).fill("a long new passphrase")
        colleague.get_by_label("Password (again)").fill("a long new passphrase")
        colleague.get_by_role("button", name="Sign Up").click()

        # The emailed link proved the address: signed in and back on the invitation.
        expect(colleague).to_have_url(link)
        expect(colleague.get_by_text("You are signed in as colleague@example.com.")).to_be_visible()
        shoot(colleague, "invitation-signed-in")
        colleague.get_by_role("button", name="Accept and join").click()
        expect(colleague).to_have_url(f"{site}/organization/")
        expect(colleague.get_by_role("status")).to_have_text(
            "Welcome to Acme Research: you joined as member."
        )
        expect(colleague.get_by_role("heading", name="Acme Research", level=1)).to_be_visible()
        # The colleague sees the members but manages nothing.
        expect(colleague.get_by_role("link", name="Manage", exact=False)).to_have_count(0)
        shoot(colleague, "organization-member")

        switcher = colleague.locator("[data-switcher]")
        expect(switcher.locator("summary")).to_have_text("Working in Acme Research: switch")
        switcher.locator("summary").click()
        current = switcher.get_by_role("button", name="Acme Research Member")
        expect(current).to_have_attribute("aria-current", "true")
        expect(switcher.get_by_role("button", name="Personal Your own account")).to_be_visible()
        shoot(colleague, "scope-switcher")
        # Escape closes the menu; switching to personal keeps the page.
        colleague.keyboard.press("Escape")
        expect(current).to_be_hidden()
        switcher.locator("summary").click()
        switcher.get_by_role("button", name="Personal Your own account").click()
        expect(colleague).to_have_url(f"{site}/organization/")
        expect(colleague.get_by_role("heading", name="Organizations", level=1)).to_be_visible()
        expect(colleague.locator("#organizations")).to_contain_text("Acme Research")
    finally:
        context.close()

    # Back to the owner: the colleague is a member; set their allowance.
    page.goto("/organization/")
    row = member_row(page, "colleague@example.com")
    expect(row).to_contain_text("No cap")
    row.get_by_role("link", name="Manage colleague@example.com").click()
    expect(page.get_by_role("heading", name="colleague@example.com")).to_be_visible()
    page.get_by_label("Monthly allowance (USD)").fill("15")
    page.get_by_role("button", name="Save allowance").click()
    expect(page.get_by_role("status")).to_have_text(
        "The monthly allowance of colleague@example.com is saved."
    )
    shoot(page, "organization-member-page")
    page.get_by_role("link", name="Back to Acme Research").click()
    row = member_row(page, "colleague@example.com")
    expect(row.locator("[data-allowance]")).to_have_text("$15.00")
    expect(row.locator("[data-spent]")).to_have_text("$0.00 of $15.00")
    assert Membership.objects.get(user__email="colleague@example.com").monthly_allowance_micros == (
        15_000_000
    )


def test_an_owner_shares_a_link_and_removes_a_member(page, site, verified_user, settings):
    settings.SITE_URL = site
    from accounts.services import organization_create

    org = organization_create(user=verified_user, name="Acme Research")
    MembershipFactory(
        organization=org, user=UserFactory(email="leaving@example.com"), role="member"
    )
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site)
    sign_in(page, site, verified_user.email)
    page.locator("#organizations").get_by_role("button", name="Open Acme Research").click()
    expect(page.get_by_role("heading", name="Acme Research", level=1)).to_be_visible()

    links = page.locator("form", has=page.get_by_role("heading", name="Create a link"))
    links.get_by_role("button", name="Create link").click()
    card = page.locator("#new-link")
    expect(card).to_contain_text("Share this link")
    url = card.get_by_label("Invitation link").input_value()
    invitation = Invitation.objects.get(email="")
    assert url == f"{site}/organization/invitations/{invitation_token(invitation)}/"
    card.get_by_role("button", name="Copy").click()
    expect(card.get_by_text("Copied to the clipboard.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == url
    shoot(page, "organization-link")

    row = member_row(page, "leaving@example.com")
    row.get_by_role("link", name="Remove leaving@example.com").click()
    expect(
        page.get_by_role("heading", name="Remove leaving@example.com from Acme Research?")
    ).to_be_visible()
    shoot(page, "organization-remove")
    page.get_by_role("button", name="Remove leaving@example.com").click()
    expect(page.get_by_role("status")).to_have_text(
        "leaving@example.com is removed from Acme Research (0 organization keys revoked)."
    )
    expect(page.locator("#members")).not_to_contain_text("leaving@example.com")
    assert not Membership.objects.filter(user__email="leaving@example.com").exists()

    # Revoking the link asks first; the page then lists it as revoked.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"#invitation-{invitation.pk}").get_by_role(
        "button", name=re.compile("Revoke")
    ).click()
    expect(page.locator(f"#invitation-{invitation.pk}")).to_contain_text("Revoked")
    page.goto(url)
    expect(
        page.get_by_role("heading", name="This invitation can no longer be used")
    ).to_be_visible()
    shoot(page, "invitation-dead")
