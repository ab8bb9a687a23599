// sentinel dashboard: candles + alert markers + CVD (lightweight-charts), rules table, live alert log.
// Everything comes from the API it is served by: REST for history and rules, /ws for live updates.
import { ColorType, CandlestickSeries, LineSeries, createChart, createSeriesMarkers } from 'lightweight-charts';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const state = {
  token: params.get('token') || localStorage.getItem('sentinel.token') || '',
  series: null,            // {exchange, symbol, timeframe}
  closed: new Map(),       // ts -> candle (latest revision)
  live: null,              // in-progress candle
  alerts: new Map(),       // id -> alert
  rules: [],
  ws: null,
  wsAttempt: 0,
  redrawQueued: false,
  userScrolled: false,
};
window.sentinelDashboard = state;  // for tests and the curious
$('token').value = state.token;
$('token').addEventListener('change', () => {
  state.token = $('token').value.trim();
  localStorage.setItem('sentinel.token', state.token);
  start();
});

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $('token').focus();
    throw new Error('the API wants a bearer token (enter it top right)');
  }
  return response;
}

async function json(path) {
  const r = await api(path);
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

// ---- chart ------------------------------------------------------------------------------------------------------

const chart = createChart($('chart'), {
  autoSize: true,
  layout: { background: { type: ColorType.Solid, color: '#161b22' }, textColor: '#d7dde4',
            panes: { separatorColor: '#2a313b', enableResize: true } },
  grid: { vertLines: { color: '#1f252d' }, horzLines: { color: '#1f252d' } },
  timeScale: { timeVisible: true, secondsVisible: false, borderColor: '#2a313b' },
  rightPriceScale: { borderColor: '#2a313b' },
});
const candles = chart.addSeries(CandlestickSeries, {
  upColor: '#26a69a', downColor: '#ef5350', borderVisible: false, wickUpColor: '#26a69a', wickDownColor: '#ef5350',
});
const cvd = chart.addSeries(LineSeries, { color: '#f0b429', lineWidth: 2, title: 'CVD', priceLineVisible: false }, 1);
chart.panes()[1].setHeight(120);
const markers = createSeriesMarkers(candles, []);
$('chart').addEventListener('wheel', () => { state.userScrolled = true; }, { passive: true });
$('chart').addEventListener('mousedown', () => { state.userScrolled = true; });

const sec = (ms) => Math.floor(ms / 1000);
const num = (s) => (s === null || s === undefined ? null : Number(s));

function bars() {
  const list = [...state.closed.values()].sort((a, b) => a.ts - b.ts);
  if (state.live && (!list.length || state.live.ts > list[list.length - 1].ts)) list.push(state.live);
  return list;
}

function redraw() {
  state.redrawQueued = false;
  const list = bars();
  candles.setData(list.map((c) => ({ time: sec(c.ts), open: num(c.open), high: num(c.high), low: num(c.low),
                                     close: num(c.close) })));
  let sum = 0;
  cvd.setData(list.map((c) => { sum += num(c.buy_volume) - num(c.sell_volume); return { time: sec(c.ts), value: sum }; }));
  const times = new Set(list.map((c) => c.ts));
  const s = state.series;
  const marks = [...state.alerts.values()]
    .filter((a) => s && a.exchange === s.exchange && a.symbol === s.symbol && a.timeframe === s.timeframe && times.has(a.ts))
    .sort((a, b) => a.ts - b.ts)
    .map((a) => ({ time: sec(a.ts), position: 'aboveBar', shape: 'arrowDown', text: a.rule,
                   color: a.severity === 'critical' ? '#ef5350' : a.severity === 'warning' ? '#f0b429' : '#4f9dde' }));
  markers.setMarkers(marks);
  const el = $('chart');
  el.dataset.candles = String(list.length);
  el.dataset.markers = String(marks.length);
  if (list.length <= 240 && !state.userScrolled) chart.timeScale().fitContent();  // small series: show it all
  const last = list[list.length - 1];
  $('last').textContent = last ? `${s.symbol} ${last.close}` : '–';
}

function queueRedraw() {
  if (!state.redrawQueued) { state.redrawQueued = true; requestAnimationFrame(redraw); }
}

function putCandle(c) {
  if (c.closed) {
    const known = state.closed.get(c.ts);
    if (!known || c.revision >= known.revision) state.closed.set(c.ts, c);
    if (state.live && state.live.ts <= c.ts) state.live = null;
  } else {
    state.live = c;
  }
  queueRedraw();
}

// ---- alerts log -------------------------------------------------------------------------------------------------

const fmtTime = (ms) => new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z';

function addAlert(a, fresh) {
  if (state.alerts.has(a.id)) return;
  state.alerts.set(a.id, a);
  const li = document.createElement('li');
  li.className = `${a.severity}${fresh ? ' new' : ''}`;
  li.dataset.rule = a.rule;
  li.dataset.id = a.id;
  const text = document.createElement('div');
  text.textContent = `${a.state === 'resolved' ? '✓ ' : ''}${a.rule} · ${a.symbol} ${a.timeframe || ''} @ ${a.price ?? '–'}`;
  const msg = document.createElement('div');
  msg.textContent = a.message || a.condition || '';
  const meta = document.createElement('div');
  meta.className = 'meta';
  meta.textContent = `${a.exchange} · candle ${fmtTime(a.ts)} · ${a.severity}`;
  li.append(text, msg, meta);
  const log = $('alert-log');
  if (fresh) log.prepend(li); else log.append(li);
  queueRedraw();
}

// ---- live -------------------------------------------------------------------------------------------------------

function connect() {
  if (state.ws) { state.ws.onclose = null; state.ws.close(); }
  const s = state.series;
  const q = new URLSearchParams({ alerts: 'true' });
  if (s) { q.append('series', `${s.exchange}|${s.symbol}|${s.timeframe}`); q.append('tickers', `${s.exchange}|${s.symbol}`); }
  if (state.token) q.append('token', state.token);
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws?${q}`);
  state.ws = ws;
  ws.onopen = () => { state.wsAttempt = 0; $('conn').textContent = 'live'; $('conn').className = 'conn on'; };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === 'subscribed') loadSeries(false).catch((err) => rulesMessage(`candles: ${err.message || err}`));
    else if (msg.type === 'candle' || msg.type === 'candle_live') putCandle(msg.data);
    else if (msg.type === 'alert') { addAlert(msg.data, true); refreshRules(); }
    else if (msg.type === 'ticker' && msg.data.last) $('last').textContent = `${msg.data.symbol} ${msg.data.last}`;
  };
  ws.onclose = () => {
    $('conn').textContent = 'offline'; $('conn').className = 'conn off';
    const delay = Math.min(10000, 250 * 2 ** state.wsAttempt++) * (0.5 + Math.random() / 2);
    setTimeout(connect, delay);  // once subscribed again, 'subscribed' refetches what was missed
  };
}

// History from the API, merged with what the socket already delivered (by bucket and revision): the socket says
// 'subscribed' before history is fetched again, so a candle closed in between is in one or the other.
async function loadSeries(reset = true) {
  const s = state.series;
  if (!s) return;
  const sym = encodeURIComponent(s.symbol);
  const body = await json(`/candles/${encodeURIComponent(s.exchange)}/${sym}/${s.timeframe}?limit=1000&live=true`);
  if (s !== state.series) return;  // the series changed meanwhile
  if (reset) { state.closed = new Map(); state.live = null; }
  const live = state.live;
  for (const c of body.candles) {
    const known = state.closed.get(c.ts);
    if (!known || c.revision >= known.revision) state.closed.set(c.ts, c);
  }
  state.live = body.live && (!live || body.live.ts >= live.ts) ? body.live : live;
  const last = Math.max(-Infinity, ...state.closed.keys());
  if (state.live && state.live.ts <= last) state.live = null;
  redraw();
  if (reset) chart.timeScale().fitContent();
}

// ---- rules ------------------------------------------------------------------------------------------------------

function describeCondition(c) {
  if (!c) return '';
  if (c.all) return c.all.map(describeCondition).join(' and ');
  if (c.any) return c.any.map(describeCondition).join(' or ');
  const side = (v) => (typeof v === 'object' && v !== null ? JSON.stringify(v).replace(/"/g, '') : String(v));
  return [c.left !== undefined ? side(c.left) : '', c.op, c.right !== undefined ? side(c.right) : '']
    .filter(Boolean).join(' ');
}

// The API's error text of a failed response: `detail` is a string, a list of `file:line: field — problem` lines,
// or FastAPI's validation errors (objects with `msg`).
async function errorText(r) {
  let detail;
  try { detail = (await r.json()).detail; } catch (e) { return `${r.status} ${r.statusText}`; }
  if (Array.isArray(detail)) return detail.map((d) => (typeof d === 'string' ? d : d.msg || JSON.stringify(d))).join('\n');
  return detail ? String(detail) : `${r.status} ${r.statusText}`;
}

// The line above the rules table: what the last action on a rule answered (errors stay until the next action).
function rulesMessage(text, kind = 'error') {
  const el = $('rules-message');
  el.textContent = text || '';
  el.className = `rules-message ${kind}`;
  el.hidden = !text;
  if (kind === 'ok' && text) setTimeout(() => { if (el.textContent === text) el.hidden = true; }, 4000);
}

async function refreshRules() {
  let rules, states;
  try {
    [rules, states] = await Promise.all([json('/rules'), json('/alerts')]);
  } catch (err) { rulesMessage(`rules: ${err.message || err}`); return; }
  state.rules = rules.rules;
  const byRule = new Map();
  for (const st of states.rules) {
    if (!byRule.has(st.rule)) byRule.set(st.rule, []);
    byRule.get(st.rule).push(st);
  }
  const names = new Set([...rules.rules.map((r) => r.name), ...byRule.keys()]);
  const tbody = $('rules-table').querySelector('tbody');
  tbody.replaceChildren();
  for (const name of [...names].sort()) {
    const r = rules.rules.find((x) => x.name === name);
    const sts = byRule.get(name) || [];
    const tr = document.createElement('tr');
    tr.dataset.rule = name;
    const firing = sts.filter((x) => x.state === 'firing').length;
    const stateText = sts.length ? sts.map((x) => `${x.symbol} ${x.state}`).join(', ') : 'no data yet';
    const cooldown = Math.max(0, ...sts.map((x) => x.cooldown_left_s));
    const cells = [
      name, r ? (r.rule.symbols || []).join(', ') : '', r ? r.rule.timeframe || '1m' : '',
      r ? describeCondition(r.rule.condition) : '(rules file)', r ? (r.enabled ? 'yes' : 'no') : '', stateText,
      sts.some((x) => x.cooldown_forever) ? 'fired (once)' : cooldown ? `${Math.round(cooldown)}s` : '–',
      r && r.snooze_until ? fmtTime(Date.parse(r.snooze_until)) : '',
    ];
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (i === 0 && r) td.append(...badges(r));
      if (i === 5) td.className = firing ? 'firing' : sts.some((x) => x.state === 'pending') ? 'pending' : '';
      tr.append(td);
    });
    const actions = document.createElement('td');
    if (r) {
      const button = (label, fn, title) => {
        const b = document.createElement('button');
        b.textContent = label;
        b.onclick = fn;
        if (title) b.title = title;
        actions.append(b);
      };
      const fromFile = r.source === 'file';
      const overrideNote = fromFile ? ' (stored as an API override of the file\'s rule)' : '';
      button(r.enabled ? 'disable' : 'enable', () => ruleAction(name, r.enabled ? 'disable' : 'enable', undefined, overrideNote));
      button(r.snooze_until ? 'unsnooze' : 'snooze 1h', () => ruleAction(name, 'snooze', r.snooze_until ? {} : { duration: '1h' }, overrideNote));
      button('edit', () => { $('rule-text').value = JSON.stringify(r.rule, null, 2); $('editor').open = true; });
      // a rule of the rules file cannot be deleted here (only in the file): disable it instead
      if (r.overrides_file) button('revert to file', () => deleteRule(name, true), 'delete the API override; the rules file\'s rule applies again');
      else if (!fromFile) button('delete', () => deleteRule(name, false));
    }
    tr.append(actions);
    tbody.append(tr);
  }
}

function badges(r) {
  const out = [];
  const badge = (text, cls, title) => {
    const b = document.createElement('span');
    b.className = `badge ${cls}`;
    b.textContent = text;
    b.title = title;
    out.push(b);
  };
  if (r.source === 'file') badge('file', 'file', 'from the alert engine\'s rules file: change it there, or disable/snooze/edit it here (stored as an API override)');
  else if (r.overrides_file) badge('override', 'override', 'an API rule replacing the rules file\'s rule of the same name');
  return out;
}

async function ruleAction(name, action, body, note = '') {
  try {
    const r = await api(`/rules/${encodeURIComponent(name)}/${action}`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body || {}),
    });
    if (r.ok) rulesMessage(`${action} ${name}: done${note}`, 'ok');
    else rulesMessage(`${action} ${name} failed: ${await errorText(r)}`);
  } catch (err) { rulesMessage(`${action} ${name} failed: ${err.message || err}`); }
  refreshRules();
}

async function deleteRule(name, override) {
  if (!confirm(override ? `delete the API override of ${name}? The rules file's ${name} applies again.` : `delete rule ${name}?`)) return;
  try {
    const r = await api(`/rules/${encodeURIComponent(name)}`, { method: 'DELETE' });
    if (r.ok) rulesMessage(override ? `${name}: the rules file's rule applies again` : `deleted ${name}`, 'ok');
    else rulesMessage(`delete ${name} failed: ${await errorText(r)}`);
  } catch (err) { rulesMessage(`delete ${name} failed: ${err.message || err}`); }
  refreshRules();
}

function ruleName(text) {
  try { return JSON.parse(text).name; } catch (e) { /* YAML */ }
  const m = text.match(/^name:\s*["']?([A-Za-z0-9_.:\-]+)/m);
  return m ? m[1] : null;
}

$('rule-save').onclick = async () => {
  const text = $('rule-text').value;
  const name = ruleName(text);
  const exists = name && state.rules.some((r) => r.name === name);
  const r = await api(exists ? `/rules/${encodeURIComponent(name)}` : '/rules', {
    method: exists ? 'PUT' : 'POST', headers: { 'Content-Type': 'application/yaml' }, body: text,
  });
  if (r.ok) {
    $('rule-errors').textContent = '';
    $('rule-status').textContent = `saved ${name}`;
    setTimeout(() => { $('rule-status').textContent = ''; }, 3000);
  } else {
    $('rule-errors').textContent = await errorText(r);
    $('rule-status').textContent = '';
  }
  refreshRules();
};
$('refresh-rules').onclick = refreshRules;
$('rule-text').value = `name: btc_above
symbols: [BTC/USDT]
timeframe: 1m
condition: {left: close, op: above, right: 60000}
cooldown: 5m
severity: warning
message: "{symbol} closed at {close}"`;

// ---- start ------------------------------------------------------------------------------------------------------

async function start() {
  try {
    const { series } = await json('/series');
    const select = $('series');
    select.replaceChildren(...series.map((s, i) => {
      const o = document.createElement('option');
      o.value = String(i);
      o.textContent = `${s.exchange} ${s.symbol} ${s.timeframe}`;
      return o;
    }));
    const wanted = params.get('series');
    const index = Math.max(0, series.findIndex((s) => `${s.exchange}|${s.symbol}|${s.timeframe}` === wanted));
    state.series = series[index] || null;
    select.value = String(index);
    select.onchange = () => { state.series = series[Number(select.value)]; loadSeries().then(connect); };
    const history = await json('/alerts/history?limit=200');
    history.items.forEach((item) => addAlert(item.alert, false));
    await loadSeries();
    await refreshRules();
    connect();
  } catch (err) {
    rulesMessage(String(err.message || err));
  }
}
// #refresh=SECONDS (0 = only after changes and alerts) sets how often the rules table is re-read
const refreshSeconds = Number(params.get('refresh') ?? 5);
if (refreshSeconds > 0) setInterval(refreshRules, refreshSeconds * 1000);
start();
