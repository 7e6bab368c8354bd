from django.urls import path

from tasks import api, views

urlpatterns = [
    path("tasks/", views.task_list, name="tasks"),
    path("tasks/media/<str:token>/", views.task_media, name="task_media"),
]

# /api/ routes of this app (added as its API views arrive).
api_urlpatterns: list = [
    path("tasks/", api.TaskListApi.as_view(), name="api-tasks"),
    path("tasks/<str:task_id>/", api.TaskDetailApi.as_view(), name="api-task"),
]
