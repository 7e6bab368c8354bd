from django.urls import path

from accounts import api, views

urlpatterns = [
    path("tokens/", views.token_list, name="tokens"),
    path("tokens/<int:token_id>/status/", views.token_set_status, name="token_set_status"),
    path("tokens/groups/", views.token_group_list, name="token_groups"),
    path("profile/", views.profile, name="profile"),
]

api_urlpatterns = [
    path("access-tokens/", api.AccessTokenListApi.as_view(), name="api-access-tokens"),
    path(
        "access-tokens/<int:token_id>/revoke/",
        api.AccessTokenRevokeApi.as_view(),
        name="api-access-token-revoke",
    ),
]
