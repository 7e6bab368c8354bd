from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        from django.apps import apps

        # A relay-only process (tokenbyte/settings_relay.py) has no sign-in pages, no allauth.
        if not apps.is_installed("allauth.account"):
            return
        # The audit list records what allauth does; its signals are the only hook (receivers.py).
        from accounts import receivers

        receivers.connect()
