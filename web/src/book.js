// The order book and futures panel of the selected pair: top levels, mid / spread / microprice, an imbalance gauge
// per band, and per perpetual of the pair its mark, index, basis, funding, open interest and recent liquidations.
// GET /books/{exchange}/{symbol} fills it; /ws (books=, derivs=) keeps it live. Figures are the exact decimals the
// feed published, shown as text; only the bars' widths are floats.
import { $, el, json } from './util.js';

const h = (tag, attrs, kids = []) => el(tag, attrs, ...kids);

const LEVELS = 10;
const LIQ_WINDOW_MS = 5 * 60 * 1000;

const trim = (s) => (s == null ? '–' : String(s).includes('.') ? String(s).replace(/0+$/, '').replace(/\.$/, '') : String(s));
const short = (s, digits = 6) => (s == null ? '–' : Number(s).toPrecision(digits).replace(/\.?0+$/, ''));

export class BookPanel {
  constructor() {
    this.pair = null;       // {exchange, symbol}
    this.book = null;       // the latest snapshot
    this.futures = new Map();  // "exchange|symbol" -> {exchange, symbol, funding, open_interest, liquidations[]}
    this.queued = false;
  }

  // The pair's latest figures; returns the perpetuals to follow live ("exchange|symbol").
  async load(series) {
    this.pair = series ? { exchange: series.exchange, symbol: series.symbol } : null;
    this.book = null;
    this.futures = new Map();
    if (!series) { this.render(); return []; }
    try {
      const body = await json(`/books/${encodeURIComponent(series.exchange)}/${encodeURIComponent(series.symbol)}`);
      if (this.pair?.symbol !== series.symbol) return [];
      this.book = body.book;
      for (const f of body.futures) this.futures.set(`${f.exchange}|${f.symbol}`, f);
    } catch (err) { /* an API without books: the panel stays hidden */ }
    this.render();
    return [...this.futures.keys()];
  }

  onBook(snap) {
    if (!this.pair || snap.exchange !== this.pair.exchange || snap.symbol !== this.pair.symbol) return;
    if (this.book && snap.ts < this.book.ts) return;
    this.book = snap;
    this.queue();
  }

  onDerivs(type, msg) {
    const f = this.futures.get(`${msg.exchange}|${msg.symbol}`);
    if (!f) return;
    if (type === 'liquidation') f.liquidations = [msg, ...(f.liquidations || [])].slice(0, 200);
    else if (!f[type] || msg.ts >= f[type].ts) f[type] = msg;
    this.queue();
  }

  queue() {
    if (!this.queued) { this.queued = true; requestAnimationFrame(() => { this.queued = false; this.render(); }); }
  }

  render() {
    const panel = $('book-panel');
    panel.hidden = !this.book && this.futures.size === 0;
    if (panel.hidden) return;
    $('book-title').textContent = this.pair ? `${this.pair.exchange} ${this.pair.symbol}` : '';
    this.renderBook();
    this.renderFutures();
  }

  renderBook() {
    const b = this.book;
    const box = $('book-levels');
    panelData($('book-panel'), b);
    if (!b) { box.replaceChildren(h('p', { className: 'empty', text: 'no order book published for this pair' })); $('book-figures').textContent = ''; $('book-gauges').replaceChildren(); return; }
    const bids = b.bids.slice(0, LEVELS);
    const asks = b.asks.slice(0, LEVELS);
    const max = Math.max(...bids.map((l) => Number(l[1])), ...asks.map((l) => Number(l[1])), 1e-12);
    // a ladder reads down its columns: every price (and every size) shown with the same number of decimals
    const levels = [...bids, ...asks];
    const price = aligned(levels.map((l) => l[0]));
    const size = aligned(levels.map((l) => l[1]));
    const rows = [];
    for (let i = 0; i < LEVELS; i++) {
      const bid = bids[i];
      const ask = asks[i];
      rows.push(h('tr', {}, [
        cell(bid && size(bid[1]), 'size bid', bid && Number(bid[1]) / max),
        cell(bid && price(bid[0]), 'price bid'),
        cell(ask && price(ask[0]), 'price ask'),
        cell(ask && size(ask[1]), 'size ask', ask && Number(ask[1]) / max),
      ]));
    }
    const table = h('table', { className: 'levels' }, [
      h('thead', {}, [h('tr', {}, ['bid size', 'bid', 'ask', 'ask size'].map((t) => h('th', { text: t })))]),
      h('tbody', {}, rows),
    ]);
    box.replaceChildren(table);
    $('book-figures').replaceChildren(
      fig('mid', trim(b.mid)), fig('spread', `${trim(b.spread)} (${short(b.spread_bps, 3)} bps)`),
      fig('microprice', short(b.microprice, 10)), fig('resyncs', String(b.resyncs)),
      fig('wall events', wallSummary(b.walls)),
    );
    $('book-gauges').replaceChildren(...b.bands.map((band) => gauge(band)));
  }

  renderFutures() {
    const box = $('book-futures');
    if (this.futures.size === 0) { box.replaceChildren(h('p', { className: 'empty', text: 'no perpetual of this pair' })); return; }
    const now = Math.max(0, ...[...this.futures.values()].flatMap((f) => [f.funding?.ts || 0, f.open_interest?.ts || 0]));
    box.replaceChildren(...[...this.futures.values()].map((f) => {
      const fr = f.funding;
      const basis = fr && fr.index_price ? (Number(fr.mark_price) - Number(fr.index_price)) / Number(fr.index_price) * 10000 : null;
      const recent = (f.liquidations || []).filter((l) => l.ts > now - LIQ_WINDOW_MS);
      const sum = (side) => recent.filter((l) => l.side === side).reduce((a, l) => a + Number(l.amount), 0);
      const div = h('div', { className: 'perp' }, [
        h('h3', { text: `${f.exchange} ${f.symbol}` }),
        fig('mark', trim(fr?.mark_price)), fig('index', trim(fr?.index_price)),
        fig('basis', basis == null ? '–' : `${basis.toFixed(2)} bps`),
        fig('funding', fr?.funding_rate == null ? '–' : `${(Number(fr.funding_rate) * 100).toFixed(4)} %`),
        fig('next funding', fr?.next_funding_ts ? new Date(fr.next_funding_ts).toISOString().slice(11, 16) + ' UTC' : '–'),
        fig('open interest', trim(f.open_interest?.amount)),
        fig('liquidations 5m', `${recent.length} (longs ${short(sum('sell'), 4)}, shorts ${short(sum('buy'), 4)})`),
      ]);
      div.dataset.basisBps = basis == null ? '' : String(basis);
      div.dataset.funding = fr?.funding_rate ?? '';
      return div;
    }));
  }
}

// wall events since the previous snapshot: counts by kind, and the largest
function wallSummary(walls) {
  if (!walls.length) return 'none';
  const counts = {};
  for (const w of walls) counts[w.kind] = (counts[w.kind] || 0) + 1;
  const big = walls.reduce((a, w) => (Number(w.size) > Number(a.size) ? w : a));
  return `${Object.entries(counts).map(([k, n]) => `${k} ${n}`).join(' · ')}; largest: ${big.kind} ${big.side} `
    + `${trim(big.size)} @ ${trim(big.price)}`;
}

// exact decimal strings padded with zeros to the most decimals any of ``values`` has once trimmed
function aligned(values) {
  const decimals = Math.max(0, ...values.map((v) => (trim(v).split('.')[1] || '').length));
  return (v) => {
    const [whole, frac = ''] = trim(v).split('.');
    return decimals ? `${whole}.${frac.padEnd(decimals, '0')}` : whole;
  };
}

function panelData(panel, b) {
  panel.dataset.ts = b ? String(b.ts) : '';
  panel.dataset.bestBid = b && b.bids.length ? b.bids[0][0] : '';
  panel.dataset.bestAsk = b && b.asks.length ? b.asks[0][0] : '';
}

function cell(text, className, fraction) {
  const td = h('td', { className, text: text ?? '' });
  if (fraction) td.style.setProperty('--fill', `${Math.min(100, fraction * 100).toFixed(1)}%`);
  return td;
}

function fig(label, value) {
  return h('div', { className: 'fig' }, [h('span', { className: 'label', text: label }), h('span', { className: 'value', text: value })]);
}

// imbalance in [-1, 1]: the bar fills from the centre, right (green) when bids outweigh asks
function gauge(band) {
  const x = band.imbalance == null ? null : Number(band.imbalance);
  const bar = h('div', { className: `bar ${x != null && x < 0 ? 'ask' : 'bid'}` });
  if (x != null) {
    bar.style.left = x >= 0 ? '50%' : `${50 + x * 50}%`;
    bar.style.width = `${Math.abs(x) * 50}%`;
  }
  const g = h('div', { className: 'gauge' }, [
    h('span', { className: 'label', text: `imbalance ±${trim(band.bps)} bps` }),
    h('div', { className: 'track' }, [bar, h('div', { className: 'mid' })]),
    h('span', { className: 'value', text: x == null ? 'unknown' : `${x >= 0 ? '+' : ''}${x.toFixed(3)}${band.complete ? '' : ' (partial)'}` }),
  ]);
  g.dataset.bps = band.bps;
  g.dataset.imbalance = band.imbalance ?? '';
  return g;
}
