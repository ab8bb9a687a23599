// The status strip under the header: the pipeline's figures from GET /status (the counters Prometheus scrapes,
// summed over every live replica), the same that `sentinel watch` shows. Totals with their rate between two
// readings (a total that went down, a process restarted, is 0/s as in Prometheus' rate), then levels.
import { $, json } from './util.js';

export const RATES = [['trades_in', 'trades'], ['candles_closed', 'candles'], ['alerts_fired', 'alerts'],
  ['notifications_sent', 'sent']];
export const LEVELS = [['lag', 'lag'], ['pending', 'pending'], ['notifications_dead', 'undelivered'],
  ['dead_letters', 'dead letters']];

const n = (v) => Number(v || 0).toLocaleString('en-US');

export class StatusStrip {
  constructor() { this.last = null; this.rates = {}; }

  update(status) {
    const prev = this.last;
    if (prev && status.ts > prev.ts) {
      const seconds = (status.ts - prev.ts) / 1000;
      this.rates = Object.fromEntries(RATES.map(([k]) => [k, Math.max(0, (status.figures[k] || 0) - (prev.figures[k] || 0)) / seconds]));
    }
    this.last = status;
  }

  line() {
    if (!this.last) return 'pipeline: –';
    const f = this.last.figures;
    const parts = RATES.map(([k, label]) => `${label} ${n(f[k])}` + (k in this.rates ? ` (${this.rates[k].toLocaleString('en-US', { minimumFractionDigits: 1, maximumFractionDigits: 1 })}/s)` : ''));
    LEVELS.forEach(([k, label]) => parts.push(`${label} ${n(f[k])}`));
    const replicas = Object.entries(this.last.services || {}).sort(([a], [b]) => (a < b ? -1 : 1));
    parts.push('replicas ' + (replicas.map(([s, c]) => `${s} ${c}`).join(' ') || 'none'));
    return parts.join(' · ');
  }

  async refresh() {
    try {
      this.update(await json('/status'));
      $('status-strip').textContent = this.line();
      $('status-strip').dataset.figures = JSON.stringify(this.last.figures);
    } catch (err) {
      $('status-strip').textContent = `pipeline: ${err.message || err}`;
    }
  }
}
