from django.urls import path

from accounts import api, org_api, views

urlpatterns = [
    path("tokens/", views.token_list, name="tokens"),
    path("tokens/new/", views.token_create, name="token_create"),
    path("tokens/batch/", views.token_batch, name="token_batch"),
    path("tokens/export.csv", views.token_export, name="token_export"),
    path("tokens/<int:token_id>/edit/", views.token_edit, name="token_edit"),
    path("tokens/<int:token_id>/status/", views.token_set_status, name="token_set_status"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token_revoke"),
    path("tokens/<int:token_id>/delete/", views.token_delete, name="token_delete"),
    path("tokens/groups/", views.token_group_list, name="token_groups"),
    path("tokens/groups/new/", views.group_create, name="token_group_create"),
    path("tokens/groups/move/", views.group_move, name="token_group_move"),
    path("tokens/groups/<int:group_id>/edit/", views.group_edit, name="token_group_edit"),
    path("tokens/groups/<int:group_id>/delete/", views.group_delete, name="token_group_delete"),
    path("profile/", views.profile, name="profile"),
    path("profile/access-tokens/", views.access_token_create_view, name="access_token_create"),
    path(
        "profile/access-tokens/<int:token_id>/revoke/",
        views.access_token_revoke_view,
        name="access_token_revoke",
    ),
]

api_urlpatterns = [
    path("keys/", api.KeyListApi.as_view(), name="api-keys"),
    path("keys/batch/revoke/", api.KeyBatchRevokeApi.as_view(), name="api-keys-batch-revoke"),
    path("keys/batch/read/", api.KeyBatchReadApi.as_view(), name="api-keys-batch-read"),
    path("keys/export.csv", api.KeyExportApi.as_view(), name="api-keys-export"),
    path("keys/<int:key_id>/", api.KeyDetailApi.as_view(), name="api-key"),
    path("keys/<int:key_id>/enable/", api.KeyEnableApi.as_view(), name="api-key-enable"),
    path("keys/<int:key_id>/disable/", api.KeyDisableApi.as_view(), name="api-key-disable"),
    path("keys/<int:key_id>/revoke/", api.KeyRevokeApi.as_view(), name="api-key-revoke"),
    path("groups/", api.GroupListApi.as_view(), name="api-groups"),
    path("groups/<int:group_id>/", api.GroupDetailApi.as_view(), name="api-group"),
    path("groups/<int:group_id>/keys/", api.GroupKeysApi.as_view(), name="api-group-keys"),
    path("profile/", api.ProfileApi.as_view(), name="api-profile"),
    path("access-tokens/", api.AccessTokenListApi.as_view(), name="api-access-tokens"),
    path(
        "access-tokens/<int:token_id>/revoke/",
        api.AccessTokenRevokeApi.as_view(),
        name="api-access-token-revoke",
    ),
    # Organizations (accounts/org_api.py).
    path("organizations/", org_api.OrganizationListApi.as_view(), name="api-organizations"),
    path(
        "organizations/<int:organization_id>/",
        org_api.OrganizationDetailApi.as_view(),
        name="api-organization",
    ),
    path(
        "organizations/<int:organization_id>/members/",
        org_api.MemberListApi.as_view(),
        name="api-organization-members",
    ),
    path(
        "organizations/<int:organization_id>/members/<int:member_id>/",
        org_api.MemberDetailApi.as_view(),
        name="api-organization-member",
    ),
    path(
        "organizations/<int:organization_id>/invitations/",
        org_api.InvitationListApi.as_view(),
        name="api-organization-invitations",
    ),
    path(
        "organizations/<int:organization_id>/invitations/<int:invitation_id>/",
        org_api.InvitationDetailApi.as_view(),
        name="api-organization-invitation",
    ),
    path("invitations/<str:token>/", org_api.InvitationByTokenApi.as_view(), name="api-invitation"),
    path(
        "invitations/<str:token>/accept/",
        org_api.InvitationAcceptApi.as_view(),
        name="api-invitation-accept",
    ),
    path(
        "invitations/<str:token>/decline/",
        org_api.InvitationDeclineApi.as_view(),
        name="api-invitation-decline",
    ),
]
