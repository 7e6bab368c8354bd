from django.urls import path

from tasks import views

urlpatterns = [
    path("tasks/", views.task_list, name="tasks"),
]

# /api/ routes of this app (added as its API views arrive).
api_urlpatterns: list = []
