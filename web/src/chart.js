// The chart: candles, volume, the rules' indicators and price levels, alert markers; CVD in a pane below.
import { CandlestickSeries, ColorType, HistogramSeries, LineSeries, LineStyle, createChart,
         createSeriesMarkers } from 'lightweight-charts';
import { compute, overlaysFor } from './indicators.js';
import { $, num, plain, sec, tfMs } from './util.js';

const LINE_COLOURS = ['#4f9dde', '#f0b429', '#c678dd', '#56b6c2', '#e5c07b', '#98c379', '#e06c75'];
const SEVERITY = { critical: '#ff40a0', warning: '#f0b429', info: '#4f9dde' };

export class Chart {
  constructor(state) {
    this.state = state;
    this.lines = new Map();  // indicator line name -> series
    this.levels = [];  // price lines on the candle series
    this.userScrolled = false;
    this.chart = createChart($('chart'), {
      autoSize: true,
      layout: { background: { type: ColorType.Solid, color: '#161b22' }, textColor: '#d7dde4',
                panes: { separatorColor: '#2a313b', enableResize: true } },
      grid: { vertLines: { color: '#1f252d' }, horzLines: { color: '#1f252d' } },
      timeScale: { timeVisible: true, secondsVisible: false, borderColor: '#2a313b', rightOffset: 4 },
      rightPriceScale: { borderColor: '#2a313b', scaleMargins: { top: 0.08, bottom: 0.22 } },
      localization: { timeFormatter: (t) => new Date(t * 1000).toISOString().slice(5, 16).replace('T', ' ') },
    });
    this.candles = this.chart.addSeries(CandlestickSeries, {
      upColor: '#26a69a', downColor: '#ef5350', borderVisible: false, wickUpColor: '#26a69a',
      wickDownColor: '#ef5350',
    });
    this.volume = this.chart.addSeries(HistogramSeries, { priceScaleId: 'volume', priceFormat: { type: 'volume' },
                                                          lastValueVisible: false, priceLineVisible: false });
    this.volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    this.cvd = this.chart.addSeries(LineSeries, { color: '#f0b429', lineWidth: 2, title: 'CVD', priceLineVisible: false }, 1);
    this.chart.panes()[1].setHeight(110);
    this.markers = createSeriesMarkers(this.candles, []);
    $('chart').addEventListener('wheel', () => { this.userScrolled = true; }, { passive: true });
    $('chart').addEventListener('mousedown', () => { this.userScrolled = true; });
  }

  reset() { this.userScrolled = false; }

  // Candles of the series, ascending; the in-progress one last.
  bars() {
    const list = [...this.state.closed.values()].sort((a, b) => a.ts - b.ts);
    const live = this.state.live;
    if (live && (!list.length || live.ts > list[list.length - 1].ts)) list.push(live);
    return list;
  }

  redraw() {
    const s = this.state.series;
    const list = this.bars();
    const el = $('chart');
    // prices read as the exchange writes them: as many decimals as the data has, no padding zeros
    const decimals = Math.min(8, Math.max(0, ...list.slice(-50).flatMap((c) => [c.open, c.high, c.low, c.close]
      .map((v) => (plain(v).split('.')[1] || '').length))));
    if (decimals !== this.decimals) {
      this.decimals = decimals;
      this.candles.applyOptions({ priceFormat: { type: 'price', precision: decimals, minMove: 10 ** -decimals } });
    }
    this.candles.setData(list.map((c) => ({ time: sec(c.ts), open: num(c.open), high: num(c.high), low: num(c.low),
                                            close: num(c.close) })));
    this.volume.setData(list.map((c) => ({ time: sec(c.ts), value: num(c.volume),
                                           color: num(c.close) >= num(c.open) ? '#26a69a55' : '#ef535055' })));
    let sum = 0;
    this.cvd.setData(list.map((c) => { sum += num(c.buy_volume) - num(c.sell_volume); return { time: sec(c.ts), value: sum }; }));
    this.drawOverlays(list);
    const times = new Set(list.map((c) => c.ts));
    const marks = [...this.state.alerts.values()]
      .filter((a) => s && a.exchange === s.exchange && a.symbol === s.symbol && a.timeframe === s.timeframe && times.has(a.ts))
      .sort((a, b) => a.ts - b.ts)
      .map((a) => ({ time: sec(a.ts), position: a.state === 'resolved' ? 'belowBar' : 'aboveBar',
                     shape: a.state === 'resolved' ? 'circle' : 'arrowDown', text: a.rule,
                     color: SEVERITY[a.severity] || SEVERITY.info }));
    this.markers.setMarkers(marks);
    el.dataset.candles = String(list.length);
    el.dataset.markers = String(marks.length);
    el.dataset.volume = String(list.length);
    if (list.length <= 240 && !this.userScrolled) this.chart.timeScale().fitContent();  // small series: show it all
    const last = list[list.length - 1];
    $('last').textContent = last ? `${s.symbol} ${plain(last.close)}` : '–';
  }

  // Indicators and levels of the rules shown on this series (rules table: "chart" ticked).
  drawOverlays(list) {
    const { indicators, levels } = overlaysFor(this.state.chartRules());
    const candles = list.map((c) => ({ ts: c.ts, o: num(c.open), h: num(c.high), l: num(c.low), c: num(c.close),
                                       v: num(c.volume), q: num(c.quote_volume) }));
    const wanted = new Map();
    for (const ind of indicators) for (const line of compute(ind, candles, tfMs)) wanted.set(line.name, line);
    for (const [name, series] of this.lines) {
      if (!wanted.has(name)) { this.chart.removeSeries(series); this.lines.delete(name); }
    }
    let i = 0;
    for (const [name, line] of wanted) {
      let series = this.lines.get(name);
      if (!series) {
        const colour = LINE_COLOURS[i % LINE_COLOURS.length];
        series = this.chart.addSeries(LineSeries, { color: colour, lineWidth: name.includes('middle') ? 1 : 2,
                                                    title: name, priceLineVisible: false, lastValueVisible: false,
                                                    crosshairMarkerVisible: false,
                                                    lineStyle: name.startsWith('bbands') ? LineStyle.Solid : LineStyle.Solid });
        this.lines.set(name, series);
      }
      series.setData(candles.map((c, j) => (line.values[j] === null ? { time: sec(c.ts) } : { time: sec(c.ts), value: line.values[j] })));
      i += 1;
    }
    this.values = Object.fromEntries([...wanted].map(([name, line]) => [name, line.values]));
    for (const level of this.levels) this.candles.removePriceLine(level);
    this.levels = levels.map((l) => this.candles.createPriceLine({ price: l.price, color: '#8b949e', lineWidth: 1,
                                                                   lineStyle: LineStyle.Dashed, axisLabelVisible: true,
                                                                   title: l.title }));
    $('chart').dataset.indicators = [...wanted.keys()].join(';');
    $('chart').dataset.levels = levels.map((l) => l.price).join(';');
    $('legend').textContent = wanted.size || levels.length
      ? `overlays: ${[...wanted.keys(), ...levels.map((l) => `${l.title} ${l.price}`)].join(' · ')}`
      : 'candles · volume · alert markers ▼ · CVD (taker buy − sell volume, cumulative) below';
  }

  // Scroll so the bar starting at `ts` (ms) is in the middle of the view.
  focus(ts) {
    const list = this.bars();
    const index = list.findIndex((c) => c.ts === ts);
    if (index < 0) return false;
    this.userScrolled = true;
    const half = 30;  // bars each side; a short series is shown whole
    if (list.length <= 2 * half) this.chart.timeScale().fitContent();
    else this.chart.timeScale().setVisibleLogicalRange({ from: index - half, to: index + half });
    $('chart').dataset.focus = String(ts);
    return true;
  }

  visibleRange() {
    const r = this.chart.timeScale().getVisibleRange();
    return r ? { from: r.from * 1000, to: r.to * 1000 } : null;
  }
}
