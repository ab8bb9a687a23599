// sentinel dashboard: a chart (candles, volume, the rules' indicators and levels, alert markers, CVD), the alert
// log, the rules table and the create/edit-alert dialog. Everything comes from the API it is served by: REST for
// history and rules, /ws for live updates. With SENTINEL_API_TOKEN set the page loads, but fetches nothing without
// the token (typed top right, kept in this browser).
import { AlertLog } from './alerts.js';
import { BookPanel } from './book.js';
import { Chart } from './chart.js';
import { RuleForm } from './form.js';
import { RulesTable } from './rules.js';
import { StatusStrip } from './status.js';
import { $, api, auth, el, errorLines, json, param, ruleMatches } from './util.js';

const state = {
  series: null,            // {exchange, symbol, timeframe}
  allSeries: [],
  closed: new Map(),       // ts -> candle (latest revision)
  live: null,              // in-progress candle
  alerts: new Map(),       // id -> alert
  rules: [],
  ws: null,
  wsAttempt: 0,
  redrawQueued: false,
  // the rules whose overlays the chart shows: those on this series (symbols, pattern, exchange, timeframe), ticked
  chartRules: () => state.rules.filter((r) => r.enabled && rules.shownOnChart(r) && ruleMatches(r.rule, state.series)
                                         && (r.rule.timeframe || '1m') === state.series.timeframe).map((r) => r.rule),
};
window.sentinelDashboard = state;  // for tests and the curious
$('token').value = auth.token;
$('token').addEventListener('change', () => {
  auth.token = $('token').value.trim();
  localStorage.setItem('sentinel.token', auth.token);
  start();
});

const book = new BookPanel();
state.book = book;
const chart = new Chart(state);
state.chart = chart;
const queueRedraw = () => {
  if (!state.redrawQueued) { state.redrawQueued = true; requestAnimationFrame(() => { state.redrawQueued = false; chart.redraw(); }); }
};
const log = new AlertLog(state, pick);
state.log = log;
const rules = new RulesTable(state, { onEdit: (r) => form.open(r), onChange: () => { log.refreshChoices(); queueRedraw(); } });
const form = new RuleForm(state, {
  onSaved: (name) => { rules.message(`saved ${name}`, 'ok'); rules.refresh(); },
  toYaml: (text) => { $('rule-text').value = text; $('editor').open = true; $('rule-text').focus(); },
});
state.form = form;
state.rulesTable = rules;

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

// An alert clicked in the log: its series on the chart, scrolled to its bar.
async function pick(alert) {
  const s = state.series;
  if (!s || s.exchange !== alert.exchange || s.symbol !== alert.symbol || (alert.timeframe && s.timeframe !== alert.timeframe)) {
    const target = state.allSeries.find((x) => x.exchange === alert.exchange && x.symbol === alert.symbol
                                              && (!alert.timeframe || x.timeframe === alert.timeframe));
    if (!target) { rules.message(`no candles of ${alert.exchange} ${alert.symbol} ${alert.timeframe || ''} to show`); return; }
    await choose(target);
  }
  chart.redraw();
  if (!chart.focus(alert.ts)) rules.message(`the bar of ${alert.rule} (${new Date(alert.ts).toISOString()}) is older than the candles loaded`);
  for (const li of $('alert-log').querySelectorAll('li.picked')) li.classList.remove('picked');
  $('alert-log').querySelector(`li[data-id="${CSS.escape(alert.id)}"]`)?.classList.add('picked');
}

// ---- live -------------------------------------------------------------------------------------------------------

function connect() {
  if (state.ws) { state.ws.onclose = null; state.ws.close(); }
  const s = state.series;
  const q = new URLSearchParams({ alerts: 'true' });
  if (s) { q.append('series', `${s.exchange}|${s.symbol}|${s.timeframe}`); q.append('tickers', `${s.exchange}|${s.symbol}`); }
  if (s) q.append('books', `${s.exchange}|${s.symbol}`);
  for (const perp of book.futures.keys()) q.append('derivs', perp);
  if (auth.token) q.append('token', auth.token);
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws?${q}`);
  state.ws = ws;
  ws.onopen = () => { state.wsAttempt = 0; $('conn').textContent = 'live'; $('conn').className = 'conn on'; };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === 'subscribed') loadSeries(false).catch((err) => rules.message(`candles: ${err.message || err}`));
    else if (msg.type === 'candle' || msg.type === 'candle_live') putCandle(msg.data);
    else if (msg.type === 'alert') { if (log.add(msg.data, true)) queueRedraw(); rules.refresh(); }
    else if (msg.type === 'ticker' && msg.data.last) $('last').textContent = `${msg.data.symbol} ${msg.data.last}`;
    else if (msg.type === 'book') book.onBook(msg.data);
    else if (msg.type === 'funding' || msg.type === 'open_interest' || msg.type === 'liquidation') book.onDerivs(msg.type, msg.data);
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
  const path = `/candles/${encodeURIComponent(s.exchange)}/${encodeURIComponent(s.symbol)}/${s.timeframe}?limit=1000&live=true`;
  // (404: the series has no candle yet; they come over the socket)
  const body = await json(path).catch((err) => { if (err.status === 404) return { candles: [], live: null }; throw err; });
  if (s !== state.series) return;  // the series changed meanwhile
  if (reset) { state.closed = new Map(); state.live = null; chart.reset(); }
  const live = state.live;
  for (const c of body.candles) {
    const known = state.closed.get(c.ts);
    if (!known || c.revision >= known.revision) state.closed.set(c.ts, c);
  }
  state.live = body.live && (!live || body.live.ts >= live.ts) ? body.live : live;
  const last = Math.max(-Infinity, ...state.closed.keys());
  if (state.live && state.live.ts <= last) state.live = null;
  chart.redraw();
  if (reset) chart.chart.timeScale().fitContent();
}

// ---- series: ?series=, the symbol search, timeframe buttons ------------------------------------------------------

const key = (s) => `${s.exchange}|${s.symbol}|${s.timeframe}`;

async function choose(s) {
  state.series = s;
  $('series').value = key(s);
  $('series-search').value = `${s.exchange} ${s.symbol}`;
  const url = new URL(location.href);  // a link to what is on screen: ?series= (an older #series= is dropped)
  url.searchParams.set('series', key(s));
  const rest = new URLSearchParams(url.hash.slice(1));
  rest.delete('series');
  url.hash = rest.toString();
  history.replaceState(null, '', url);
  renderTimeframes();
  rules.refresh();
  await loadSeries();
  await book.load(s);
  connect();
}

function renderTimeframes() {
  const s = state.series;
  const tfs = state.allSeries.filter((x) => s && x.exchange === s.exchange && x.symbol === s.symbol);
  $('tf-buttons').replaceChildren(...tfs.map((x) => el('button', {
    text: x.timeframe, className: x.timeframe === s.timeframe ? 'active' : '', onclick: () => choose(x),
  })));
}

function setupSeries(series) {
  state.allSeries = series;
  $('series').replaceChildren(...series.map((s) => el('option', { value: key(s), text: `${s.exchange} ${s.symbol} ${s.timeframe}` })));
  $('series').onchange = () => choose(series.find((s) => key(s) === $('series').value));
  const pairs = [...new Set(series.map((s) => `${s.exchange} ${s.symbol}`))];
  $('series-list').replaceChildren(...pairs.map((p) => el('option', { value: p })));
  $('series-symbols').replaceChildren(...[...new Set(series.map((s) => s.symbol))].map((v) => el('option', { value: v })));
  $('series-search').onchange = () => {
    const text = $('series-search').value.trim().toLowerCase();
    const tf = state.series?.timeframe;
    const hits = series.filter((s) => `${s.exchange} ${s.symbol}`.toLowerCase().includes(text)
                                      || s.symbol.replace('/', '').toLowerCase() === text.replace('/', ''));
    const best = hits.find((s) => s.timeframe === tf) || hits[0];
    if (best) choose(best); else rules.message(`no series matches ${text}`);
  };
}

// ---- the YAML editor (power users) ------------------------------------------------------------------------------

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
    $('rule-errors').textContent = (await errorLines(r)).join('\n');
    $('rule-status').textContent = '';
  }
  rules.refresh();
};
$('rule-text').value = `name: btc_above
symbols: [BTC/USDT]
timeframe: 1m
condition: {left: close, op: above, right: 60000}
cooldown: 5m
severity: warning
message: "{symbol} closed at {close}"`;

// ---- start ------------------------------------------------------------------------------------------------------

// "exchange|symbol|timeframe" of ?series=, or null
function parseSeries(text) {
  const parts = (text || '').split('|');
  return parts.length === 3 && parts.every(Boolean) ? { exchange: parts[0], symbol: parts[1], timeframe: parts[2] } : null;
}

// A page opened before the pipeline made its first candle: the series list is empty (or lacks ?series=) until then.
// Read it again until it has what is on screen; with nothing chosen yet, choose its first series.
async function awaitSeriesList() {
  const { series } = await json('/series');
  setupSeries(series);
  renderTimeframes();
  if (!state.series && series.length) await choose(series[0]);
  if (!state.series || !series.some((s) => key(s) === key(state.series))) {
    setTimeout(() => awaitSeriesList().catch(() => setTimeout(awaitSeriesList, 5000)), 2000);
  }
}

async function start() {
  try {
    const { series } = await json('/series');
    setupSeries(series);
    const wanted = param('series');
    state.series = series.find((s) => key(s) === wanted) || parseSeries(wanted) || series[0] || null;
    if (state.series) { $('series').value = key(state.series); $('series-search').value = `${state.series.exchange} ${state.series.symbol}`; }
    renderTimeframes();
    if (!state.series || !series.some((s) => key(s) === key(state.series))) setTimeout(awaitSeriesList, 2000);
    const history = await json('/alerts/history?limit=1000');
    history.items.forEach((item) => log.add(item.alert, false));
    await loadSeries();
    await book.load(state.series);
    await rules.refresh();
    connect();
  } catch (err) {
    rules.message(String(err.message || err));
  }
}
// ?refresh=SECONDS (0 = only after changes and alerts) sets how often the rules table is re-read
const refreshSeconds = Number(param('refresh') ?? 5);
if (refreshSeconds > 0) setInterval(() => rules.refresh(), refreshSeconds * 1000);
// ?status=SECONDS (0 = off) sets how often the status strip re-reads GET /status
const strip = new StatusStrip();
state.statusStrip = strip;
const statusSeconds = Number(param('status') ?? 5);
if (statusSeconds > 0) { strip.refresh(); setInterval(() => strip.refresh(), statusSeconds * 1000); }
start();
