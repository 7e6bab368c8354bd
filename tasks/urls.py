from django.urls import path

from tasks import views

urlpatterns = [
    path("tasks/", views.task_list, name="tasks"),
]
