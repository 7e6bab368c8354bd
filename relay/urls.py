"""No Django URLs: a relay-only process answers every path through the relay app."""

urlpatterns: list = []
