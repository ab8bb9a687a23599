// The overlays a chart shows for the rules on its series: moving averages, Bollinger bands, VWAP (computed here from
// the candles, as the engine computes them: EMA seeded with the SMA of its first `period` values, bands with the
// population standard deviation), and the fixed levels conditions compare the price with.

const PRICE_FIELDS = new Set(['open', 'high', 'low', 'close', 'price', 'vwap', 'bid', 'ask', 'mid', 'last']);
const OVERLAYS = new Set(['sma', 'ema', 'bbands', 'vwap']);
const SOURCES = { open: (c) => c.o, high: (c) => c.h, low: (c) => c.l, close: (c) => c.c,
                  hl2: (c) => (c.h + c.l) / 2, hlc3: (c) => (c.h + c.l + c.c) / 3,
                  ohlc4: (c) => (c.o + c.h + c.l + c.c) / 4, volume: (c) => c.v };

// {ema: 21} / {ema: {period: 9, source: high}} -> {key, params}
export function indicatorOf(operand) {
  if (!operand || typeof operand !== 'object' || Array.isArray(operand)) return null;
  const keys = Object.keys(operand);
  if (keys.length !== 1) return null;
  const key = keys[0];
  const inner = operand[key];
  const short = { macd: 'output', vwap: 'anchor', cvd: 'bars' }[key] || 'period';
  const params = inner && typeof inner === 'object' ? { ...inner } : inner === null || inner === undefined ? {} : { [short]: inner };
  return { key, params };
}

export function label({ key, params }) {
  const shown = Object.entries(params).filter(([k, v]) => !(k === 'source' && v === 'close')).map(([, v]) => v);
  return `${key}(${shown.join(',')})`;
}

// Every leaf condition of a rule's condition tree that reads the rule's own series.
export function leaves(condition, out = []) {
  if (!condition || typeof condition !== 'object') return out;
  if (Array.isArray(condition.all)) condition.all.forEach((c) => leaves(c, out));
  else if (Array.isArray(condition.any)) condition.any.forEach((c) => leaves(c, out));
  else if (!condition.timeframe && !condition.symbol) out.push(condition);
  return out;
}

// What to draw for a set of rules: indicators (deduplicated by label) and price levels.
export function overlaysFor(rules) {
  const indicators = new Map();
  const levels = [];
  for (const rule of rules) {
    for (const leaf of leaves(rule.condition)) {
      const left = leaf.left ?? 'close';
      const priceLeft = typeof left === 'string' && PRICE_FIELDS.has(left);
      for (const side of ['left', 'right', 'lower', 'upper']) {
        const operand = leaf[side];
        const ind = indicatorOf(operand);
        if (ind && OVERLAYS.has(ind.key)) indicators.set(label(ind), ind);
        const number = typeof operand === 'number' || (typeof operand === 'string' && /^-?\d+(\.\d+)?$/.test(operand));
        if (number && priceLeft && side !== 'left') levels.push({ price: Number(operand), title: `${rule.name} ${side === 'right' ? leaf.op : side}` });
      }
    }
  }
  return { indicators: [...indicators.values()], levels };
}

function sma(values, period) {
  const out = new Array(values.length).fill(null);
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    sum += values[i];
    if (i >= period) sum -= values[i - period];
    if (i >= period - 1) out[i] = sum / period;
  }
  return out;
}

function ema(values, period) {
  const out = new Array(values.length).fill(null);
  if (values.length < period) return out;
  let prev = values.slice(0, period).reduce((a, b) => a + b, 0) / period;
  out[period - 1] = prev;
  const k = 2 / (period + 1);
  for (let i = period; i < values.length; i++) {
    prev = (values[i] - prev) * k + prev;
    out[i] = prev;
  }
  return out;
}

function bbands(values, period, k) {
  const mid = sma(values, period);
  const up = new Array(values.length).fill(null);
  const low = new Array(values.length).fill(null);
  for (let i = period - 1; i < values.length; i++) {
    let sq = 0;
    for (let j = i - period + 1; j <= i; j++) sq += (values[j] - mid[i]) ** 2;
    const sd = Math.sqrt(sq / period);
    up[i] = mid[i] + k * sd;
    low[i] = mid[i] - k * sd;
  }
  return { upper: up, middle: mid, lower: low };
}

function vwap(candles, anchorMs) {
  let pv = 0; let vol = 0; let session = null;
  return candles.map((c) => {
    const s = Math.floor(c.ts / anchorMs);
    if (s !== session) { session = s; pv = 0; vol = 0; }
    pv += c.q; vol += c.v;
    return vol > 0 ? pv / vol : null;
  });
}

// Lines of one indicator over candles ({ts, o, h, l, c, v, q}): [{name, values}].
export function compute(ind, candles, tfMs) {
  const p = ind.params;
  const src = candles.map(SOURCES[p.source || 'close'] || SOURCES.close);
  const name = label(ind);
  if (ind.key === 'sma') return [{ name, values: sma(src, Number(p.period)) }];
  if (ind.key === 'ema') return [{ name, values: ema(src, Number(p.period)) }];
  if (ind.key === 'vwap') return [{ name, values: vwap(candles, tfMs(p.anchor || '1d')) }];
  const bands = bbands(src, Number(p.period || 20), Number(p.k || 2));
  const base = `bbands(${p.period || 20},${p.k || 2})`;
  return [{ name: `${base} upper`, values: bands.upper }, { name: `${base} middle`, values: bands.middle },
          { name: `${base} lower`, values: bands.lower }];
}
