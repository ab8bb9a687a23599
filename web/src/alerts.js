// The alert log: live and past alerts with filters (rule, symbol, severity, state), search, time range, CSV/JSON
// export, click to show the alert's bar; optional sound and browser notification on new alerts.
import { $, download, el, fmtTime, plain } from './util.js';

const COLUMNS = ['id', 'fired_at', 'ts', 'rule', 'exchange', 'symbol', 'timeframe', 'severity', 'state', 'price',
                 'value', 'condition', 'message'];

export class AlertLog {
  constructor(state, onPick) {
    this.state = state;
    this.onPick = onPick;
    this.notified = 0;
    this.beeps = 0;
    for (const id of ['f-rule', 'f-symbol', 'f-severity', 'f-state', 'f-search', 'f-from', 'f-to']) {
      $(id).addEventListener('input', () => this.render());
    }
    $('f-range').addEventListener('change', () => {
      const hours = Number($('f-range').value);
      $('f-to').value = '';
      $('f-from').value = hours ? new Date(Date.now() - hours * 3_600_000).toISOString().slice(0, 16) : '';
      this.render();
    });
    $('f-clear').onclick = () => {
      for (const id of ['f-rule', 'f-symbol', 'f-severity', 'f-state', 'f-search', 'f-from', 'f-to', 'f-range']) $(id).value = '';
      this.render();
    };
    $('export-csv').onclick = () => download('sentinel-alerts.csv', this.csv(), 'text/csv');
    $('export-json').onclick = () => download('sentinel-alerts.json', JSON.stringify(this.filtered(), null, 2), 'application/json');
    const prefs = JSON.parse(localStorage.getItem('sentinel.alertPrefs') || '{}');
    $('opt-sound').checked = Boolean(prefs.sound);
    $('opt-notify').checked = Boolean(prefs.notify);
    $('opt-sound').onchange = () => this.savePrefs();
    $('opt-notify').onchange = async () => {
      if ($('opt-notify').checked && 'Notification' in window && Notification.permission !== 'granted') {
        const answer = await Notification.requestPermission();
        if (answer !== 'granted') $('opt-notify').checked = false;
      }
      this.savePrefs();
    };
  }

  savePrefs() {
    localStorage.setItem('sentinel.alertPrefs', JSON.stringify({ sound: $('opt-sound').checked, notify: $('opt-notify').checked }));
  }

  add(alert, fresh) {
    if (this.state.alerts.has(alert.id)) return false;
    this.state.alerts.set(alert.id, alert);
    if (fresh) this.announce(alert);
    this.refreshChoices();
    this.render();
    return true;
  }

  // The time an alert is filtered and sorted by: when it fired (exchange time).
  static when(a) { return a.fired_at ?? a.ts; }

  filtered() {
    const rule = $('f-rule').value; const symbol = $('f-symbol').value;
    const severity = $('f-severity').value; const st = $('f-state').value;
    const words = $('f-search').value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const from = $('f-from').value ? Date.parse(`${$('f-from').value}Z`) : null;
    const to = $('f-to').value ? Date.parse(`${$('f-to').value}Z`) : null;
    return [...this.state.alerts.values()].filter((a) => {
      const t = AlertLog.when(a);
      if ((rule && a.rule !== rule) || (symbol && a.symbol !== symbol) || (severity && a.severity !== severity)
          || (st && a.state !== st) || (from !== null && t < from) || (to !== null && t > to)) return false;
      const text = `${a.rule} ${a.symbol} ${a.exchange} ${a.message} ${a.condition}`.toLowerCase();
      return words.every((w) => text.includes(w));
    }).sort((a, b) => AlertLog.when(b) - AlertLog.when(a) || (a.id < b.id ? 1 : -1));
  }

  csv() {
    const cell = (v) => {
      const s = v === null || v === undefined ? '' : String(v);
      return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
    };
    return [COLUMNS.join(','), ...this.filtered().map((a) => COLUMNS.map((c) => cell(a[c])).join(','))].join('\n') + '\n';
  }

  refreshChoices() {
    const fill = (id, values) => {
      const select = $(id);
      const current = select.value;
      const known = [...select.options].map((o) => o.value);
      const want = ['', ...[...values].sort()];
      if (known.join('\u0000') === want.join('\u0000')) return;
      select.replaceChildren(...want.map((v) => el('option', { value: v, text: v || `${select.getAttribute('aria-label')}: all` })));
      select.value = want.includes(current) ? current : '';
    };
    const alerts = [...this.state.alerts.values()];
    fill('f-rule', new Set([...alerts.map((a) => a.rule), ...this.state.rules.map((r) => r.name)]));
    fill('f-symbol', new Set(alerts.map((a) => a.symbol)));
  }

  render() {
    const list = this.filtered();
    const items = list.slice(0, 500).map((a) => {
      const li = el('li', { className: `${a.severity}${a.state === 'resolved' ? ' resolved' : ''}`, tabIndex: 0,
                            dataset: { rule: a.rule, id: a.id, ts: String(a.ts) },
                            title: 'show this bar on the chart', onclick: () => this.onPick(a),
                            onkeydown: (ev) => { if (ev.key === 'Enter') this.onPick(a); } },
        el('div', { className: 'head', text: `${a.state === 'resolved' ? '✓ ' : ''}${a.rule} · ${a.symbol} ${a.timeframe || ''} @ ${plain(a.price)}` }),
        el('div', { text: a.message || a.condition || '' }),
        el('div', { className: 'meta', text: `${a.exchange} · bar ${fmtTime(a.ts)} · ${a.severity}${a.state === 'resolved' ? ' · resolved' : ''}` }));
      if (this.fresh && this.fresh.has(a.id)) li.classList.add('new');
      return li;
    });
    $('alert-log').replaceChildren(...items);
    $('alert-empty').hidden = list.length > 0;
    $('alert-empty').textContent = this.state.alerts.size ? 'no alert matches these filters' : 'no alerts yet: they appear here as they fire';
    $('alert-count').textContent = `${list.length} of ${this.state.alerts.size}`;
  }

  announce(alert) {
    this.fresh = this.fresh || new Set();
    this.fresh.add(alert.id);  // flashes in the log for a few seconds
    setTimeout(() => this.fresh.delete(alert.id), 3000);
    if ($('opt-sound').checked) this.beep(alert.severity);
    if ($('opt-notify').checked && 'Notification' in window && Notification.permission === 'granted') {
      new Notification(`${alert.severity.toUpperCase()} ${alert.rule}: ${alert.symbol} @ ${plain(alert.price)}`,
                       { body: alert.message || alert.condition || '', tag: alert.id });
      this.notified += 1;
    }
  }

  beep(severity) {
    try {
      this.audio = this.audio || new AudioContext();
      const osc = this.audio.createOscillator();
      const gain = this.audio.createGain();
      osc.frequency.value = severity === 'critical' ? 880 : severity === 'warning' ? 660 : 520;
      gain.gain.setValueAtTime(0.15, this.audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.0001, this.audio.currentTime + 0.35);
      osc.connect(gain).connect(this.audio.destination);
      osc.start();
      osc.stop(this.audio.currentTime + 0.36);
      this.beeps += 1;
    } catch (err) { /* no audio output: the log still shows the alert */ }
  }
}
