"""The console's organization pages, under /organization/ (tokenbyte/urls.py includes them)."""

from django.urls import path

from accounts import org_views

urlpatterns = [
    path("", org_views.organization_home, name="organization"),
    path("switch/", org_views.organization_switch, name="organization_switch"),
    path("create/", org_views.organization_create_view, name="organization_create"),
    path("settings/", org_views.organization_settings, name="organization_settings"),
    path("members/<int:member_id>/", org_views.member_detail, name="organization_member"),
    path("members/<int:member_id>/role/", org_views.member_role, name="organization_member_role"),
    path(
        "members/<int:member_id>/allowance/",
        org_views.member_allowance,
        name="organization_member_allowance",
    ),
    path("members/<int:member_id>/keys/", org_views.member_keys, name="organization_member_keys"),
    path(
        "members/<int:member_id>/remove/",
        org_views.member_remove_view,
        name="organization_member_remove",
    ),
    path("invitations/", org_views.invitation_create_view, name="organization_invite"),
    path(
        "invitations/<int:invitation_id>/revoke/",
        org_views.invitation_revoke_view,
        name="organization_invitation_revoke",
    ),
    path("invitations/<str:token>/", org_views.invitation_detail, name="invitation"),
    path(
        "invitations/<str:token>/accept/",
        org_views.invitation_accept_view,
        name="invitation_accept",
    ),
    path(
        "invitations/<str:token>/decline/",
        org_views.invitation_decline_view,
        name="invitation_decline",
    ),
]
