from usage.models import RequestLog


def request_log_create(**fields) -> RequestLog:
    """Write one call's log row. The relay calls it inside the settlement transaction."""
    return RequestLog.objects.create(**fields)
