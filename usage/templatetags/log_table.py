"""The Logs page's table rows, rendered in Python.

A page is 100 rows of 11 cells. Through template nodes (a filter per cell, an include for the
status badge, a {% url %} per row) that cost about 20 ms of a page's server time; built here with
one format string per row it is about 5, with the same HTML. Text a user or a client chose (model,
key and group names) is escaped; the rest is numbers and the request id.
"""

from django import template
from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from tokenbyte.filters import user_zone
from tokenbyte.money import format_usd
from tokenbyte.templatetags.console import ms
from usage.models import RequestLog

register = template.Library()

_ROW = (
    '<tr><td>{when}</td><td class="num">{cost}</td><td><code>{model}</code></td>'
    '<td class="num">{duration}</td><td class="num">{ttft}</td><td class="num">{prompt:,}</td>'
    '<td class="num">{completion:,}</td><td class="num">{cached:,}</td>'
    '<td><span class="badge {badge}">{status}</span></td>{member}<td>{key}{group}</td>'
    '<td><a href="{url}" aria-label="Details of the call at {when}">Details</a></td></tr>'
)


def status_badge_class(code: int) -> str:
    """The badge of partials/status_badge.html: success, client error, server error."""
    return "badge-ok" if code < 300 else "badge-warn" if code < 500 else "badge-bad"


@register.simple_tag(takes_context=True)
def log_rows(context: template.Context, logs: list[RequestLog], member: bool = False) -> SafeString:
    """The rows; with `member`, a cell of each call's member_email (an organization's logs)."""
    zone = user_zone(context["user"])
    # Request ids are [A-Za-z0-9_-]: one reverse() for the page, the id put in its place.
    url = reverse("log_detail", args=["REQUEST_ID"])
    rows = []
    for log in logs:
        group = log.group_name
        rows.append(
            _ROW.format(
                when=log.created_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"),
                cost=format_usd(log.cost_micros),
                model=escape(log.model_id),
                duration=ms(log.duration_ms),
                ttft=ms(log.ttft_ms),
                prompt=log.prompt_tokens,
                completion=log.completion_tokens,
                cached=log.cached_tokens,
                badge=status_badge_class(log.status_code),
                status=log.status_code,
                key=escape(log.token_name or "–"),
                group=f' <span class="muted">· {escape(group)}</span>' if group else "",
                member=f'<td class="log-member">{escape(log.member_email)}</td>' if member else "",
                url=url.replace("REQUEST_ID", escape(log.request_id)),
            )
        )
    return mark_safe("\n".join(rows))  # noqa: S308 - every chosen text is escaped above
