from django.urls import path

from catalog import views

urlpatterns = [
    path("models/", views.model_list, name="models"),
]

# /api/ routes of this app (added as its API views arrive).
api_urlpatterns: list = []
