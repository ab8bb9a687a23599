"""How numbers read to a person: exact decimals without trailing zeros (``61717.63000000`` → ``61717.63``)."""

from __future__ import annotations

from decimal import Context, Decimal, InvalidOperation


def plain(value: Decimal | int | str | None, none: str = "-") -> str:
    """``value`` in plain notation (never an exponent) without trailing zeros; ``none`` for None.

    Exact: only zeros after the last significant digit go, so ``0.00012300`` reads ``0.000123`` and ``1E+3`` ``1000``.
    A string that is not a number is returned as it is.
    """
    if value is None:
        return none
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return str(value)
    if not number.is_finite():
        return str(number)
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


class PlainDecimal(Decimal):
    """A Decimal that reads plain in a message template: ``{close}`` gives ``3156`` for ``3156.00`` (a format spec,
    where one is given, is Decimal's own)."""

    __slots__ = ()

    def __str__(self) -> str:
        return plain(Decimal(self))

    def __format__(self, spec: str, context: Context | None = None, /) -> str:
        return plain(Decimal(self)) if not spec else Decimal(self).__format__(spec, context)


def readable(value: object) -> object:
    """``value`` for a message template: a Decimal reads without trailing zeros (see ``PlainDecimal``); else as is."""
    return PlainDecimal(value) if type(value) is Decimal else value
