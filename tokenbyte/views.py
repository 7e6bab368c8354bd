from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, resolve_url


def home(request: HttpRequest) -> HttpResponse:
    """`/`: the dashboard for a signed-in user, the login page for anyone else."""
    if request.user.is_authenticated:
        return redirect("dashboard")
    return redirect(resolve_url(settings.LOGIN_URL))
