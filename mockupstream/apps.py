from django.apps import AppConfig


class MockUpstreamConfig(AppConfig):
    name = "mockupstream"
