"""The builder's direct candle encoding gives the bytes of the Candle model's own encoding."""

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.candle_builder.bars import Bar
from services.candle_builder.series import encode_candle
from shared.schemas import Candle

amounts = st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal(0), max_value=Decimal(10) ** 12,
                      places=None)


@given(o=amounts, h=amounts, low=amounts, c=amounts, v=amounts, b=amounts, q=amounts,
       trades=st.integers(0, 10**9), ids=st.one_of(st.none(), st.integers(0, 2**62), st.text(min_size=1, max_size=12)),
       revision=st.integers(-1, 5), closed=st.booleans(), history=st.booleans(), incomplete=st.booleans(),
       prev_ts=st.one_of(st.none(), st.integers(0, 2**50)), as_of=st.one_of(st.none(), st.integers(0, 2**50)))
def test_encode_candle_is_the_models_encoding(o, h, low, c, v, b, q, trades, ids, revision, closed, history,
                                              incomplete, prev_ts, as_of):
    bar = Bar(1_700_000_000_000, 1_700_000_060_000, o)
    bar.high, bar.low, bar.close, bar.volume, bar.buy_volume = h, low, c, v, b
    bar.sell_volume, bar.quote_volume, bar.trades = v - b, q, trades
    bar.first_id, bar.last_id, bar.revision, bar.incomplete = ids, ids, revision, incomplete
    raw = encode_candle("binance", "BTC/USDT", "1m", bar, closed=closed, history=history, prev_ts=prev_ts,
                       as_of=as_of)
    model = Candle(exchange="binance", symbol="BTC/USDT", timeframe="1m", ts=bar.ts, open=o, high=h, low=low, close=c,
                   volume=v, buy_volume=b, sell_volume=v - b, quote_volume=q, trades=trades, first_trade_id=ids,
                   last_trade_id=ids, closed=closed, revision=max(revision, 0), incomplete=incomplete,
                   history=history, prev_ts=prev_ts, as_of=as_of)
    assert raw == model.encode()
    assert Candle.decode(raw) == model
