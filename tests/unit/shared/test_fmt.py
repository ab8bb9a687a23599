"""shared.fmt.plain: the same number, in plain notation, without trailing zeros."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from shared.fmt import plain


@given(st.decimals(allow_nan=False, allow_infinity=False, places=None, min_value=-10**12, max_value=10**12))
def test_plain_is_the_same_number_without_exponent_or_trailing_zeros(value: Decimal):
    text = plain(value)
    assert Decimal(text) == value
    assert "E" not in text and "e" not in text
    if "." in text:
        assert not text.endswith("0") and not text.endswith(".")
    assert text != "-0"


def test_what_people_read():
    assert [plain(v) for v in (Decimal("61717.63000000"), Decimal("1E+3"), Decimal("0.00012300"), None, 7,
                               "61000.50", "n/a")] == ["61717.63", "1000", "0.000123", "-", "7", "61000.5", "n/a"]
