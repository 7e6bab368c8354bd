"""The fake Stripe's hosted checkout page: plain, accessible HTML that works without JavaScript.

Rendered from the session's public object, so the page always shows the state the API reports.
Standard library only, like the server (no Django).
"""

from __future__ import annotations

from html import escape
from typing import Any

# Currencies whose smallest unit is the whole unit (Stripe's list, the common ones).
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv"}
)
CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cny": "¥", "inr": "₹"}

_STYLE = """
:root { color-scheme: light dark; --bg: #f6f8fa; --card: #fff; --text: #1a1f36; --muted: #5b6478;
  --line: #e3e8ee; --accent: #635bff; --accent-text: #fff; --ok: #0e7a43; --warn: #8a5a00;
  --bad: #b42318; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0f1220; --card: #1a1f36; --text: #f1f3f9; --muted: #a3acc2; --line: #2e3550;
    --accent: #8c86ff; --accent-text: #0f1220; --ok: #4cc38a; --warn: #f0b84b; --bad: #ff8a80; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 30rem; margin: 2rem auto; padding: 1.5rem; background: var(--card);
  border: 1px solid var(--line); border-radius: 12px; }
@media (max-width: 32rem) { main { margin: 0; border-radius: 0; border-width: 0 0 1px; } }
.mode { display: inline-block; margin: 0 0 1rem; padding: .1rem .5rem; border-radius: 999px;
  background: var(--warn); color: var(--card); font-size: .8rem; font-weight: 600; }
h1 { margin: 0 0 .25rem; font-size: 1.25rem; }
.total { margin: 0 0 1.25rem; font-size: 2rem; font-weight: 700; }
table { width: 100%; border-collapse: collapse; margin: 0 0 1rem; }
th, td { padding: .5rem 0; border-top: 1px solid var(--line); text-align: left;
  vertical-align: top; }
td.num, th.num { text-align: right; white-space: nowrap; }
caption { text-align: left; color: var(--muted); font-size: .875rem; padding-bottom: .25rem; }
dl { display: grid; grid-template-columns: auto 1fr; gap: .25rem 1rem; margin: 0 0 1.5rem; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
label { display: block; margin: 0 0 .25rem; font-weight: 600; }
input[type=email] { width: 100%; margin: 0 0 1rem; padding: .6rem .75rem; font: inherit;
  color: inherit; background: transparent; border: 1px solid var(--line); border-radius: 8px; }
.actions { display: flex; flex-wrap: wrap; gap: .75rem; align-items: center; }
button { padding: .7rem 1.25rem; font: inherit; font-weight: 600; border-radius: 8px;
  border: 1px solid var(--accent); background: transparent; color: var(--text); cursor: pointer; }
button.primary { background: var(--accent); color: var(--accent-text); }
button:focus-visible, a:focus-visible, input:focus-visible { outline: 3px solid var(--accent);
  outline-offset: 2px; }
a { color: var(--accent); }
.state { margin: 0 0 1rem; padding: .75rem 1rem; border-radius: 8px; border: 1px solid var(--line);
  font-weight: 600; }
.state.ok { color: var(--ok); }
.state.warn { color: var(--warn); }
.state.bad { color: var(--bad); }
.notice { color: var(--bad); font-weight: 600; }
.fine { color: var(--muted); font-size: .875rem; margin: 1.5rem 0 0; }
"""


def format_amount(amount: int, currency: str) -> str:
    """`2000, "usd"` -> "$20.00"; `500, "jpy"` -> "¥500"; unknown symbols -> "20.00 CHF"."""
    currency = currency.lower()
    if currency in ZERO_DECIMAL_CURRENCIES:
        number = f"{amount:,}"
    else:
        sign = "-" if amount < 0 else ""
        whole, cents = divmod(abs(amount), 100)
        number = f"{sign}{whole:,}.{cents:02d}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{number}" if symbol else f"{number} {currency.upper()}"


def fill_session_id(url: str, session_id: str) -> str:
    """Stripe replaces the literal `{CHECKOUT_SESSION_ID}` in success_url with the session id."""
    return url.replace("{CHECKOUT_SESSION_ID}", session_id)


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="robots" content="noindex">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f'<main aria-labelledby="page-title">\n{body}\n</main>\n</body>\n</html>\n'
    )


def _items_table(session: dict[str, Any], line_items: list[dict[str, Any]]) -> str:
    currency = session["currency"]
    rows = "".join(
        "<tr>"
        f"<td>{escape(item['description'])}</td>"
        f'<td class="num">{item["quantity"]}</td>'
        f'<td class="num">{escape(format_amount(item["amount_total"], currency))}</td>'
        "</tr>"
        for item in line_items
    )
    return (
        "<table>\n<caption>Order summary</caption>\n"
        '<thead><tr><th scope="col">Item</th><th scope="col" class="num">Qty</th>'
        '<th scope="col" class="num">Amount</th></tr></thead>\n'
        f"<tbody>{rows}</tbody>\n</table>"
    )


def _state_block(session: dict[str, Any], async_state: str | None) -> tuple[str, str]:
    """(the state paragraph, the actions below it) for a session that is no longer open."""
    sid = session["id"]
    success = escape(fill_session_id(session["success_url"], sid))
    back = f'<p><a href="{success}">Return to the merchant</a></p>'
    if session["status"] == "expired":
        cancel = escape(session["cancel_url"])
        return (
            '<p class="state bad" role="status">This checkout session has expired.</p>',
            f'<p><a href="{cancel}">Return to the merchant</a></p>',
        )
    if session["payment_status"] == "paid":
        return '<p class="state ok" role="status">Payment complete.</p>', back
    if async_state == "failed":
        return '<p class="state bad" role="status">Payment failed.</p>', back
    return (
        '<p class="state warn" role="status">Payment processing</p>',
        "<p>The bank debit has not settled yet. Settle it as the bank would:</p>\n"
        '<div class="actions">'
        f'<form method="post" action="/c/pay/{escape(sid)}/async-succeed">'
        '<button type="submit" class="primary">Succeed payment</button></form>'
        f'<form method="post" action="/c/pay/{escape(sid)}/async-fail">'
        '<button type="submit">Fail payment</button></form>'
        f"</div>\n{back}",
    )


def checkout_page(
    session: dict[str, Any],
    line_items: list[dict[str, Any]],
    *,
    async_state: str | None = None,
    notice: str | None = None,
) -> str:
    """The hosted checkout page of one session, in whatever state it is."""
    sid = session["id"]
    total = format_amount(session["amount_total"], session["currency"])
    email = session.get("customer_email") or (session.get("customer_details") or {}).get("email")
    parts = [
        '<p class="mode">Test mode · fake Stripe</p>',
        '<h1 id="page-title">Checkout</h1>',
        f'<p class="total">{escape(total)}</p>',
        _items_table(session, line_items),
    ]
    if email:
        parts.append(f"<dl><dt>Email</dt><dd>{escape(email)}</dd></dl>")
    if notice:
        parts.append(f'<p class="notice" role="alert">{escape(notice)}</p>')
    if session["status"] == "open":
        email_field = (
            ""
            if session.get("customer_email")
            else '<label for="email">Email</label>'
            '<input type="email" id="email" name="email" autocomplete="email" required>'
        )
        parts.append(
            f'<form method="post" action="/c/pay/{escape(sid)}/pay">{email_field}'
            '<div class="actions">'
            '<button type="submit" class="primary">Pay</button>'
            f'<button type="submit" formaction="/c/pay/{escape(sid)}/pay-async">'
            "Pay later (async)</button>"
            f'<a href="{escape(session["cancel_url"])}">Cancel</a>'
            "</div></form>"
        )
        parts.append(
            '<p class="fine">No card is asked and no money moves: this is the fake Stripe server '
            "for development and tests. “Pay later (async)” behaves like a bank debit that "
            "settles later.</p>"
        )
    else:
        state, actions = _state_block(session, async_state)
        parts.extend([state, actions])
    return _document(f"Pay {total} · Fake Stripe Checkout", "\n".join(parts))


def missing_page(session_id: str) -> str:
    return _document(
        "Checkout session not found · Fake Stripe",
        '<p class="mode">Test mode · fake Stripe</p>\n'
        '<h1 id="page-title">Checkout session not found</h1>\n'
        f"<p>There is no checkout session <code>{escape(session_id)}</code> on this server. "
        "It may have been created before the server restarted or was reset.</p>",
    )
