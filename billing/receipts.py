"""Receipts ("bills") of card top-ups: one receipt, three forms.

`topup_receipt` gathers what a receipt says; the printable HTML page, the email (plain text,
HTML and the PDF attached) and the PDF download are all drawn from it, so they cannot disagree.
Only a top-up that was paid (status paid, or refunded afterwards) has a receipt: the lead's
credit step gives it its number (TB-YYYYMM-000123) and paid_at.
"""

import io
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from reportlab.lib.colors import HexColor
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen.canvas import Canvas

from billing.models import TopUp
from billing.selectors import RECEIPT_STATUSES
from tokenbyte.filters import user_zone
from tokenbyte.money import format_usd

RECEIPT_ITEM = "Account credit"
BALANCE_RULE = "Prepaid credit; does not expire."


def site_name() -> str:
    return getattr(settings, "SITE_NAME", "") or "TokenByte"


@dataclass(frozen=True)
class ReceiptRefund:
    # In the payer's zone, "2026-11-21 09:30:00".
    refunded_at: str
    amount_micros: int


@dataclass(frozen=True)
class Receipt:
    topup_id: int
    site_name: str
    number: str
    # When the payment was credited, in the payer's time zone, and that zone's name.
    paid_at: str
    zone_name: str
    billed_to_email: str
    billed_to_name: str
    item: str
    amount_micros: int
    # Stripe's PaymentIntent id (pi_…): what the payer's bank statement and Stripe know it by.
    payment_reference: str
    refunds: tuple[ReceiptRefund, ...]
    refunded_micros: int
    status_label: str
    balance_rule: str
    # Absolute URLs of the printable page and the PDF.
    url: str
    pdf_url: str
    # The organization whose wallet the top-up credited (billed to it, paid by the payer above);
    # empty for a top-up of the payer's own wallet.
    organization_name: str = ""

    @property
    def net_micros(self) -> int:
        return self.amount_micros - self.refunded_micros

    @property
    def filename(self) -> str:
        return f"receipt-{self.number}.pdf"


def _local(value: datetime, zone: ZoneInfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def receipt_urls(*, topup_id: int) -> tuple[str, str]:
    """The absolute URLs of a top-up's printable receipt and of its PDF."""
    base = settings.SITE_URL
    return (
        base + reverse("topup_receipt", args=[topup_id]),
        base + reverse("topup_receipt_pdf", args=[topup_id]),
    )


def topup_receipt(*, topup: TopUp) -> Receipt:
    """What the receipt of a paid (or since refunded) top-up says. Reads the top-up's refunds
    (one query), its user and its wallet's organization (loaded unless select_related brought
    them)."""
    if topup.status not in RECEIPT_STATUSES or not topup.receipt_number or topup.paid_at is None:
        raise ValueError(f"top-up {topup.pk} has no receipt (status {topup.status})")
    user = topup.user
    zone = user_zone(user)
    refunds = tuple(
        ReceiptRefund(
            refunded_at=_local(refund.created_at, zone), amount_micros=refund.amount_micros
        )
        for refund in topup.refunds.order_by("created_at", "id")
    )
    if topup.status == TopUp.Status.REFUNDED:
        status_label = "Refunded"
    elif topup.refunded_micros:
        status_label = "Paid, partly refunded"
    else:
        status_label = "Paid"
    url, pdf_url = receipt_urls(topup_id=topup.pk)
    return Receipt(
        topup_id=topup.pk,
        site_name=site_name(),
        number=topup.receipt_number,
        paid_at=_local(topup.paid_at, zone),
        zone_name=zone.key,
        billed_to_email=user.email,
        billed_to_name=user.name,
        item=RECEIPT_ITEM,
        amount_micros=topup.amount_micros,
        payment_reference=topup.stripe_payment_intent_id,
        refunds=refunds,
        refunded_micros=topup.refunded_micros,
        status_label=status_label,
        balance_rule=BALANCE_RULE,
        url=url,
        pdf_url=pdf_url,
        organization_name=topup.wallet.organization.name if topup.wallet.organization_id else "",
    )


# --- PDF -----------------------------------------------------------------------------------------

_INK = HexColor("#1b1f24")
_MUTED = HexColor("#5c6570")
_RULE = HexColor("#d9dee4")


class _Sheet:
    """A receipt page drawn line by line from the top, in points (72 a inch)."""

    MARGIN = 56
    LABEL_WIDTH = 130

    def __init__(self, canvas: Canvas) -> None:
        self.canvas = canvas
        self.width, self.height = A4
        self.right = self.width - self.MARGIN
        self.y = self.height - self.MARGIN

    def down(self, points: float) -> None:
        self.y -= points
        if self.y < self.MARGIN:
            self.canvas.showPage()
            self.y = self.height - self.MARGIN

    def text(self, x: float, value: str, *, size: float = 10, bold: bool = False, color=_INK):
        self.canvas.setFont("Helvetica-Bold" if bold else "Helvetica", size)
        self.canvas.setFillColor(color)
        self.canvas.drawString(x, self.y, value)

    def right_text(self, value: str, *, size: float = 10, bold: bool = False, color=_INK):
        self.canvas.setFont("Helvetica-Bold" if bold else "Helvetica", size)
        self.canvas.setFillColor(color)
        self.canvas.drawRightString(self.right, self.y, value)

    def field(self, label: str, value: str) -> None:
        self.text(self.MARGIN, label, color=_MUTED)
        self.text(self.MARGIN + self.LABEL_WIDTH, value)
        self.down(16)

    def rule(self) -> None:
        self.canvas.setStrokeColor(_RULE)
        self.canvas.setLineWidth(0.75)
        self.canvas.line(self.MARGIN, self.y, self.right, self.y)


def receipt_pdf(*, topup: TopUp, receipt: Receipt | None = None) -> bytes:
    """The receipt as a one-page PDF (reportlab's canvas, the built-in Helvetica: nothing is
    fetched or embedded). Uncompressed and invariant: a few kilobytes, the same bytes for the
    same receipt, and its text can be searched in the file."""
    receipt = receipt or topup_receipt(topup=topup)
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4, invariant=1, pageCompression=0)
    canvas.setTitle(f"{receipt.site_name} receipt {receipt.number}")
    canvas.setAuthor(receipt.site_name)
    canvas.setSubject(f"{receipt.item} {format_usd(receipt.amount_micros)}")
    sheet = _Sheet(canvas)
    margin = sheet.MARGIN

    sheet.text(margin, receipt.site_name, size=20, bold=True)
    sheet.right_text("Receipt", size=20, color=_MUTED)
    sheet.down(22)
    sheet.right_text(receipt.number, size=11, bold=True)
    sheet.down(18)
    sheet.rule()
    sheet.down(26)

    sheet.field("Receipt number", receipt.number)
    sheet.field("Date paid", f"{receipt.paid_at} ({receipt.zone_name})")
    billed_to = receipt.billed_to_email
    if receipt.billed_to_name:
        billed_to = f"{receipt.billed_to_name} <{receipt.billed_to_email}>"
    if receipt.organization_name:
        sheet.field("Billed to", receipt.organization_name)
        sheet.field("Paid by", billed_to)
    else:
        sheet.field("Billed to", billed_to)
    sheet.field("Payment reference", receipt.payment_reference or "–")
    sheet.field("Status", receipt.status_label)
    sheet.down(14)

    sheet.text(margin, "Item", size=9, bold=True, color=_MUTED)
    sheet.right_text("Amount (USD)", size=9, bold=True, color=_MUTED)
    sheet.down(8)
    sheet.rule()
    sheet.down(18)
    sheet.text(margin, receipt.item)
    sheet.right_text(format_usd(receipt.amount_micros))
    sheet.down(10)
    sheet.rule()
    sheet.down(20)
    sheet.text(margin, "Total paid", bold=True)
    sheet.right_text(format_usd(receipt.amount_micros), size=12, bold=True)
    sheet.down(28)

    if receipt.refunds:
        sheet.text(margin, "Refunds", size=9, bold=True, color=_MUTED)
        sheet.down(18)
        for refund in receipt.refunds:
            sheet.text(margin, f"Refunded {refund.refunded_at} ({receipt.zone_name})")
            sheet.right_text(format_usd(-refund.amount_micros))
            sheet.down(16)
        sheet.down(2)
        sheet.rule()
        sheet.down(18)
        sheet.text(margin, "Net paid", bold=True)
        sheet.right_text(format_usd(receipt.net_micros), size=12, bold=True)
        sheet.down(28)

    sheet.text(margin, receipt.balance_rule)
    sheet.down(16)
    sheet.text(margin, "All amounts in US dollars (USD).", color=_MUTED)
    sheet.down(16)
    sheet.text(margin, receipt.url, size=9, color=_MUTED)
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


# --- email ---------------------------------------------------------------------------------------


def topup_receipt_email_send(*, topup_id: int) -> bool:
    """Email a top-up's receipt to its payer, once: a plain-text body, the receipt as HTML, and
    the PDF attached. Returns whether an email went out.

    Running it again after a success sends nothing; if sending fails, receipt_emailed_at stays
    empty and the task's retry sends it. (Two runs at the very same moment could both send: the
    mark is set after sending, so that a failed send is never recorded as sent.)
    """
    topup = (
        TopUp.objects.select_related("user", "wallet__organization")
        .filter(pk=topup_id, status__in=RECEIPT_STATUSES, receipt_number__isnull=False)
        .first()
    )
    if topup is None or topup.receipt_emailed_at is not None:
        return False
    receipt = topup_receipt(topup=topup)
    context = {"receipt": receipt, "site_url": settings.SITE_URL}
    message = EmailMultiAlternatives(
        subject=f"Your {receipt.site_name} receipt {receipt.number}",
        body=render_to_string("billing/emails/receipt.txt", context),
        to=[receipt.billed_to_email],
    )
    message.attach_alternative(
        render_to_string("billing/emails/receipt.html", context), "text/html"
    )
    message.attach(receipt.filename, receipt_pdf(topup=topup, receipt=receipt), "application/pdf")
    message.send()
    TopUp.objects.filter(pk=topup.pk, receipt_emailed_at__isnull=True).update(
        receipt_emailed_at=timezone.now()
    )
    return True
