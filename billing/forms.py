"""The wallet page's forms: a card top-up amount and the low-balance alert threshold."""

from decimal import Decimal, InvalidOperation

from django import forms

from billing.selectors import topup_amount_error, topup_limits_micros
from tokenbyte.errors import ApplicationError
from tokenbyte.money import MICROS_PER_USD, format_usd


def _parse_usd(text: str) -> Decimal:
    """What a person types as dollars: "25", "25.50", "$25", "1,000"."""
    cleaned = text.strip().removeprefix("$").replace(",", "").strip()
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise forms.ValidationError(
            "Enter an amount in US dollars, such as 25 or 25.50.", code="invalid"
        ) from None
    if not value.is_finite():
        raise forms.ValidationError(
            "Enter an amount in US dollars, such as 25 or 25.50.", code="invalid"
        )
    return value


class TopUpForm(forms.Form):
    """A card top-up of any amount within the limits, in whole cents (a preset button posts
    the same field)."""

    amount_usd = forms.CharField(
        label="Amount (USD)",
        max_length=32,
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        low, high = topup_limits_micros()
        self.fields[
            "amount_usd"
        ].help_text = f"From {format_usd(low)} to {format_usd(high)}, in whole cents."

    def clean_amount_usd(self) -> int:
        """The amount in micro-USD (the field's cleaned value is micros, not dollars)."""
        value = _parse_usd(self.cleaned_data["amount_usd"])
        micros = value * MICROS_PER_USD
        if micros != micros.to_integral_value():
            raise forms.ValidationError(
                "Enter whole cents, at most 2 decimals (for example 25.50).", code="cents"
            )
        problem = topup_amount_error(amount_micros=int(micros))
        if problem:
            raise forms.ValidationError(problem, code="limits")
        return int(micros)

    def add_service_error(self, exc: ApplicationError) -> None:
        # The service's checks are the form's own; whatever it refuses is about the amount,
        # except that Stripe was out of reach (a message for the whole form).
        field = None if exc.code == "payments_unavailable" else "amount_usd"
        self.add_error(field, exc.message)


class ThresholdForm(forms.Form):
    """The low-balance alert: a USD amount, or empty for no alert."""

    threshold_usd = forms.DecimalField(
        label="Alert me below (USD)",
        required=False,
        min_value=Decimal(0),
        max_digits=18,
        decimal_places=6,
        help_text="Leave empty to turn the alert off.",
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )

    @classmethod
    def for_threshold(cls, threshold_micros: int | None, data=None) -> "ThresholdForm":
        # "5.00", "12.345": what format_usd shows, without the dollar sign.
        initial = None if threshold_micros is None else format_usd(threshold_micros)[1:]
        return cls(data=data, initial={"threshold_usd": initial})

    def threshold_micros(self) -> int | None:
        value = self.cleaned_data["threshold_usd"]
        return None if value is None else int(value * MICROS_PER_USD)
