from django.urls import path

from accounts import views

urlpatterns = [
    path("tokens/", views.token_list, name="tokens"),
    path("tokens/<int:token_id>/status/", views.token_set_status, name="token_set_status"),
    path("tokens/groups/", views.token_group_list, name="token_groups"),
    path("profile/", views.profile, name="profile"),
]
