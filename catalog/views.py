from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from catalog.selectors import models_callable


@login_required
def model_list(request: HttpRequest) -> HttpResponse:
    return render(request, "catalog/model_list.html", {"models": list(models_callable())})
