from functools import cached_property

from django.http import HttpRequest
from django.urls import reverse

from accounts.scope import Scope, request_scope
from accounts.selectors import ScopeChoice, scope_choices_for_user
from tokenbyte.money import format_usd

# The top navigation of product document 000, in its order: (label, URL name or path).
NAV = [
    ("Dashboard", "dashboard"),
    ("Tokens", "tokens"),
    ("Models", "models"),
    ("Playground", "playground"),
    ("Logs", "logs"),
    ("Usage", "usage"),
    ("Tasks", "tasks"),
    ("Wallet", "wallet"),
    ("Organization", "organization"),
    ("Profile", "/profile/"),
]


class ConsoleHeader:
    """The header's navigation and balance, computed when a template first reads them.

    Lazy so that pages without the console header (the admin, JSON errors) cost no query.
    """

    def __init__(self, request: HttpRequest):
        self.request = request

    @cached_property
    def nav(self) -> list[dict]:
        items = []
        for label, target in NAV:
            href = target if target.startswith("/") else reverse(target)
            current = self.request.path.startswith(href)
            # allauth's account pages (email, password, passkeys) belong under Profile.
            if href == "/profile/" and self.request.path.startswith("/accounts/"):
                current = True
            items.append({"label": label, "href": href, "current": current})
        return items

    @cached_property
    def scope(self) -> Scope:
        return request_scope(self.request)

    @cached_property
    def scopes(self) -> list[ScopeChoice]:
        """The switcher's choices (templates/partials/scope_switcher.html), each with its
        wallet's balance: one query for both."""
        return scope_choices_for_user(user=self.request.user)

    @cached_property
    def balance(self) -> str:
        # The scope's wallet: in an organization's scope, the organization's.
        org_id = self.scope.organization_id
        choice = next((c for c in self.scopes if c.organization_id == org_id), None)
        return format_usd(choice.balance_micros if choice is not None else 0)


def console(request: HttpRequest) -> dict:
    if not request.user.is_authenticated:
        return {}
    return {"console": ConsoleHeader(request)}
