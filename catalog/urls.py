from django.urls import path

from catalog import views

urlpatterns = [
    path("models/", views.model_list, name="models"),
]
