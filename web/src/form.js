// The create/edit-alert dialog, in the spirit of TradingView's: symbols or a pattern, timeframe, a condition builder
// (operand / indicator with parameters, operator, value or second operand, all/any groups), trigger frequency,
// cooldown, `for`, expiry, notify on resolve, channels, the message with placeholder hints and a live preview. It
// sends the rule as JSON; the engine's own parser (through the API) answers, and each problem is shown at its field.
import { describeCondition } from './rules.js';
import { $, api, el, errorLines, plain, symbolsOf, TIMEFRAMES } from './util.js';

const FIELDS = ['close', 'open', 'high', 'low', 'price', 'volume', 'buy_volume', 'sell_volume', 'quote_volume',
                'delta', 'trades', 'vwap', 'bid', 'ask', 'mid', 'spread', 'spread_bps', 'last'];
const SOURCES = ['close', 'open', 'high', 'low', 'hl2', 'hlc3', 'ohlc4', 'volume'];
// indicator -> [[param, default, choices?]]; the first is the short form ({ema: 21})
const INDICATORS = {
  ema: [['period', '21'], ['source', 'close', SOURCES]],
  sma: [['period', '20'], ['source', 'close', SOURCES]],
  rsi: [['period', '14'], ['source', 'close', SOURCES]],
  macd: [['output', 'line', ['line', 'signal', 'histogram']], ['fast', '12'], ['slow', '26'], ['signal', '9'], ['source', 'close', SOURCES]],
  bbands: [['output', 'middle', ['upper', 'middle', 'lower']], ['period', '20'], ['k', '2'], ['source', 'close', SOURCES]],
  atr: [['period', '14']],
  vwap: [['anchor', '1d', TIMEFRAMES]],
  volume_sma: [['period', '20']],
  cvd: [['bars', '20'], ['anchor', '', ['', ...TIMEFRAMES]]],
};
const SHORT = { ema: 'period', sma: 'period', rsi: 'period', atr: 'period', volume_sma: 'period', macd: 'output',
                bbands: 'period', vwap: 'anchor', cvd: 'bars' };
const KINDS = {
  compare: ['crosses_up', 'crosses_down', 'crossing', 'greater_than', 'less_than'],
  channel: ['entering_channel', 'exiting_channel', 'inside_channel', 'outside_channel'],
  moving: ['moving_up', 'moving_down', 'moving_up_pct', 'moving_down_pct'],
  spike: ['volume_spike'],
};
const OP_LABEL = { crosses_up: 'crossing up', crosses_down: 'crossing down', crossing: 'crossing', greater_than: 'greater than',
                   less_than: 'less than', entering_channel: 'entering channel', exiting_channel: 'exiting channel',
                   inside_channel: 'inside channel', outside_channel: 'outside channel', moving_up: 'moving up by',
                   moving_down: 'moving down by', moving_up_pct: 'moving up %', moving_down_pct: 'moving down %',
                   volume_spike: 'volume spike' };
const ALIASES = { above: 'greater_than', below: 'less_than', crosses: 'crossing', crossing_up: 'crosses_up', crossing_down: 'crosses_down' };
export const PLACEHOLDERS = ['symbol', 'close', 'price', 'value', 'timeframe', 'exchange', 'rule', 'time', 'open',
                             'high', 'low', 'volume', 'buy_volume', 'sell_volume', 'delta', 'cvd', 'ts', 'condition',
                             'severity', 'state'];

const isNumber = (s) => /^-?\d+(\.\d+)?$/.test(String(s).trim());
const numberOut = (s) => { const t = String(s).trim(); return String(Number(t)) === t ? Number(t) : t; };

// ---- model <-> rule JSON ------------------------------------------------------------------------------------------

function operandModel(v) {
  if (v === undefined || v === null) return { kind: 'field', field: 'close', number: '', ind: 'ema', params: {} };
  if (typeof v === 'number' || isNumber(v)) return { kind: 'number', field: 'close', number: String(v), ind: 'ema', params: {} };
  if (typeof v === 'string') return { kind: 'field', field: v, number: '', ind: 'ema', params: {} };
  const ind = Object.keys(v)[0];
  const inner = v[ind];
  const params = inner && typeof inner === 'object' ? Object.fromEntries(Object.entries(inner).map(([k, x]) => [k, String(x)]))
    : inner === null || inner === undefined ? {} : { [SHORT[ind]]: String(inner) };
  return { kind: 'indicator', field: 'close', number: '', ind, params };
}

function operandJson(m) {
  if (m.kind === 'number') return numberOut(m.number);
  if (m.kind === 'field') return m.field;
  const given = Object.entries(m.params).filter(([, x]) => x !== '' && x !== undefined);
  const short = SHORT[m.ind];
  const value = (k, x) => (['source', 'output', 'anchor'].includes(k) ? x : numberOut(x));
  if (given.length === 1 && given[0][0] === short) return { [m.ind]: value(short, given[0][1]) };
  if (!given.length) return { [m.ind]: null };
  return { [m.ind]: Object.fromEntries(given.map(([k, x]) => [k, value(k, x)])) };
}

export function conditionModel(c) {
  if (c && Array.isArray(c.all)) return { type: 'group', mode: 'all', children: c.all.map(conditionModel) };
  if (c && Array.isArray(c.any)) return { type: 'group', mode: 'any', children: c.any.map(conditionModel) };
  const op = ALIASES[c?.op] || c?.op || 'crosses_up';
  const kind = Object.keys(KINDS).find((k) => KINDS[k].includes(op)) || 'compare';
  return {
    type: 'leaf', kind, op, left: operandModel(c?.left ?? 'close'), right: operandModel(c?.right ?? { ema: 21 }),
    lower: operandModel(c?.lower ?? 0), upper: operandModel(c?.upper ?? 0),
    amount: String(c?.amount ?? c?.percent ?? ''), span: c?.window ? 'window' : 'bars', bars: String(c?.bars ?? 1),
    window: c?.window ?? '', factor: String(c?.factor ?? 3), period: String(c?.period ?? 20),
    timeframe: c?.timeframe ?? '', symbol: c?.symbol ?? '',
  };
}

export function conditionJson(m) {
  if (m.type === 'group') {
    const children = m.children.map(conditionJson);
    return children.length === 1 && m.root ? children[0] : { [m.mode]: children };
  }
  const out = {};
  if (m.kind !== 'spike') out.left = operandJson(m.left);
  out.op = m.op;
  if (m.kind === 'compare') out.right = operandJson(m.right);
  if (m.kind === 'channel') { out.lower = operandJson(m.lower); out.upper = operandJson(m.upper); }
  if (m.kind === 'moving') {
    out[m.op.endsWith('_pct') ? 'percent' : 'amount'] = numberOut(m.amount);
    if (m.span === 'window') out.window = m.window; else out.bars = Number(m.bars);
  }
  if (m.kind === 'spike') { out.factor = numberOut(m.factor); out.period = Number(m.period); }
  if (m.timeframe) out.timeframe = m.timeframe;
  if (m.symbol) out.symbol = m.symbol;
  return out;
}

// ---- the dialog -----------------------------------------------------------------------------------------------------

export class RuleForm {
  constructor(state, { onSaved, toYaml }) {
    this.state = state;
    this.onSaved = onSaved;
    this.toYaml = toYaml;
    this.editing = null;
    $('rf-timeframe').replaceChildren(...TIMEFRAMES.map((tf) => el('option', { value: tf, text: tf })));
    $('rf-placeholders').replaceChildren(...PLACEHOLDERS.map((p) => el('button', {
      type: 'button', className: 'chip', text: `{${p}}`, title: `insert {${p}}`, onclick: () => this.insert(`{${p}}`),
    })));
    $('rule-form').addEventListener('input', () => this.preview());
    $('rf-save').onclick = (ev) => { ev.preventDefault(); this.save(); };
    $('rf-cancel').onclick = (ev) => { ev.preventDefault(); $('rule-form').close(); };
    $('rf-yaml').onclick = (ev) => { ev.preventDefault(); this.toYaml(JSON.stringify(this.read(), null, 2)); $('rule-form').close(); };
    $('new-rule').onclick = () => this.open(null);
  }

  open(stored) {
    const s = this.state.series;
    const rule = stored ? stored.rule : {
      name: '', symbols: s ? [s.symbol] : [], exchange: s ? s.exchange : undefined, timeframe: s ? s.timeframe : '1m',
      condition: { left: 'close', op: 'crosses_up', right: { ema: 21 } }, frequency: 'once_per_bar_close',
      severity: 'warning', message: '{symbol} {timeframe}: close {close} ({condition})',
    };
    this.editing = stored ? stored.name : null;
    $('rf-title').textContent = stored ? `Edit alert ${stored.name}${stored.source === 'file' ? ' (saved as an API override of the rules file)' : ''}` : 'Create alert';
    $('rf-name').value = rule.name || '';
    $('rf-exchange').value = rule.exchange || '';
    $('rf-symbols').value = symbolsOf(rule).join(', ');
    $('rf-timeframe').value = rule.timeframe || '1m';
    $('rf-frequency').value = rule.frequency || 'once_per_bar_close';
    $('rf-cooldown').value = rule.cooldown ?? '';
    $('rf-for').value = rule.for ?? '';
    $('rf-expires').value = rule.expires_at ? String(rule.expires_at).replace(/(:\d\d)(\.\d+)?(Z|[+-]00:00)$/, '$1').slice(0, 16) : '';
    $('rf-resolve').checked = Boolean(rule.notify_on_resolve);
    $('rf-channels').value = (rule.channels || []).join(', ');
    $('rf-severity').value = rule.severity || 'info';
    $('rf-labels').value = Object.entries(rule.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ');
    $('rf-message').value = rule.message ?? '';
    $('rf-enabled').checked = rule.enabled !== false;
    this.extra = Object.fromEntries(Object.entries(rule).filter(([k]) => ['snooze_until'].includes(k)));
    this.model = conditionModel(rule.condition);
    if (this.model.type !== 'group') this.model = { type: 'group', mode: 'all', children: [this.model] };
    this.model.root = true;
    this.renderCondition();
    this.clearErrors();
    this.preview();
    if (!$('rule-form').open) $('rule-form').showModal();
  }

  insert(text) {
    const box = $('rf-message');
    const at = box.selectionStart ?? box.value.length;
    box.value = box.value.slice(0, at) + text + box.value.slice(box.selectionEnd ?? at);
    box.focus();
    box.selectionStart = box.selectionEnd = at + text.length;
    this.preview();
  }

  read() {
    const list = (id) => $(id).value.split(',').map((x) => x.trim()).filter(Boolean);
    const symbols = list('rf-symbols');
    const rule = { name: $('rf-name').value.trim() };
    if ($('rf-exchange').value.trim()) rule.exchange = $('rf-exchange').value.trim();
    rule.symbols = symbols.length === 1 ? symbols[0] : symbols;
    rule.timeframe = $('rf-timeframe').value;
    rule.condition = conditionJson(this.model);
    rule.frequency = $('rf-frequency').value;
    if ($('rf-cooldown').value.trim()) rule.cooldown = $('rf-cooldown').value.trim();
    if ($('rf-for').value.trim()) rule.for = $('rf-for').value.trim();
    if ($('rf-expires').value) rule.expires_at = `${$('rf-expires').value}:00Z`;
    if ($('rf-resolve').checked) rule.notify_on_resolve = true;
    if (list('rf-channels').length) rule.channels = list('rf-channels');
    rule.severity = $('rf-severity').value;
    const labels = list('rf-labels').map((kv) => kv.split('=').map((x) => x.trim()));
    if (labels.length) rule.labels = Object.fromEntries(labels.map(([k, v]) => [k, v ?? '']));
    if ($('rf-message').value) rule.message = $('rf-message').value;
    if (!$('rf-enabled').checked) rule.enabled = false;
    return Object.assign(rule, this.extra);
  }

  // The message as the engine would write it, on the series' last candle.
  preview() {
    if (!this.model) return;
    const s = this.state.series;
    const bars = [...this.state.closed.values()].sort((a, b) => a.ts - b.ts);
    const c = this.state.live || bars[bars.length - 1] || {};
    let rule;
    try { rule = this.read(); } catch (e) { return; }
    const delta = c.buy_volume !== undefined ? plain(String(Number(c.buy_volume) - Number(c.sell_volume))) : '…';
    const values = {
      rule: rule.name || 'my_alert', exchange: s?.exchange ?? '…', symbol: s?.symbol ?? '…', timeframe: rule.timeframe,
      price: plain(c.close), close: plain(c.close), open: plain(c.open), high: plain(c.high), low: plain(c.low),
      volume: plain(c.volume), buy_volume: plain(c.buy_volume), sell_volume: plain(c.sell_volume), delta,
      value: '(left side)', cvd: '(CVD today)', time: new Date().toISOString().slice(0, 19).replace('T', ' ') + ' UTC',
      ts: String(c.ts ?? ''), condition: describeCondition(rule.condition), severity: rule.severity, state: 'firing',
    };
    const unknown = [];
    const text = (rule.message || '{rule}: {symbol} {timeframe} {condition} (close {close})')
      .replace(/\{(\w+)\}/g, (m, k) => (k in values ? values[k] : (unknown.push(k), m)));
    $('rf-preview').textContent = text;
    $('rf-preview').classList.toggle('warn', unknown.length > 0);
    $('rf-hint').textContent = unknown.length ? `unknown placeholder(s): ${unknown.join(', ')}` : '';
  }

  clearErrors() {
    for (const node of $('rule-form').querySelectorAll('.field-error')) node.remove();
    for (const node of $('rule-form').querySelectorAll('.invalid')) node.classList.remove('invalid');
    $('rf-errors').textContent = '';
  }

  // Each `request body:LINE: field.path — problem` line next to the field of that path (or its nearest parent).
  showErrors(lines) {
    this.clearErrors();
    const general = [];
    for (const line of lines) {
      const m = line.match(/^request body:[\d?]*:?\s*(\S+) — (.*)$/s);
      const path = m ? m[1] : null;
      let target = null;
      if (path) {
        const candidates = [...$('rule-form').querySelectorAll('[data-path]')]
          .filter((n) => path === n.dataset.path || path.startsWith(`${n.dataset.path}.`) || path.startsWith(`${n.dataset.path}[`))
          .sort((a, b) => b.dataset.path.length - a.dataset.path.length
                || Number(/^(INPUT|SELECT|TEXTAREA)$/.test(b.tagName)) - Number(/^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName)));
        target = candidates[0] || null;
      }
      if (!target) { general.push(line); continue; }
      target.classList.add('invalid');
      const box = target.closest('.field, .leaf, .group') || target;
      box.append(el('div', { className: 'field-error', role: 'alert', dataset: { path }, text: m[2].replace(/^Value error, /, '') }));
    }
    $('rf-errors').textContent = general.join('\n');
  }

  async save() {
    const rule = this.read();
    const exists = this.editing && this.editing === rule.name;
    const r = await api(exists ? `/rules/${encodeURIComponent(rule.name)}` : '/rules', {
      method: exists ? 'PUT' : 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(rule),
    });
    if (!r.ok) { this.showErrors(await errorLines(r)); return; }
    this.clearErrors();
    $('rule-form').close();
    this.onSaved(rule.name);
  }

  // ---- the condition builder ---------------------------------------------------------------------------------------

  renderCondition() {
    $('rf-condition').replaceChildren(this.groupView(this.model, 'condition', null));
    this.preview();
  }

  groupView(g, path, parent) {
    const childPath = (i) => (g.root && g.children.length === 1 ? path : `${path}.${g.mode}[${i}]`);
    const box = el('div', { className: 'group', dataset: { path } },
      el('div', { className: 'group-head' },
        el('select', { className: 'mode', onchange: (ev) => { g.mode = ev.target.value; this.renderCondition(); } },
          el('option', { value: 'all', text: 'all of (and)', selected: g.mode === 'all' }),
          el('option', { value: 'any', text: 'any of (or)', selected: g.mode === 'any' })),
        el('button', { type: 'button', text: '+ condition', className: 'add-condition',
                       onclick: () => { g.children.push(conditionModel(null)); this.renderCondition(); } }),
        el('button', { type: 'button', text: '+ group', className: 'add-group',
                       onclick: () => { g.children.push({ type: 'group', mode: 'any', children: [conditionModel(null)] }); this.renderCondition(); } }),
        parent ? el('button', { type: 'button', text: '✕', title: 'remove this group',
                                onclick: () => { parent.children.splice(parent.children.indexOf(g), 1); this.renderCondition(); } }) : null),
      ...g.children.map((c, i) => (c.type === 'group' ? this.groupView(c, childPath(i), g) : this.leafView(c, childPath(i), g))));
    return box;
  }

  leafView(m, path, parent) {
    const rerender = () => this.renderCondition();
    const opSelect = el('select', { className: 'op', dataset: { path: `${path}.op` }, onchange: (ev) => {
      m.op = ev.target.value;
      m.kind = Object.keys(KINDS).find((k) => KINDS[k].includes(m.op));
      rerender();
    } }, ...Object.entries(KINDS).map(([kind, ops]) => el('optgroup', { label: kind },
      ...ops.map((op) => el('option', { value: op, text: OP_LABEL[op], selected: op === m.op })))));
    const parts = [];
    if (m.kind !== 'spike') parts.push(this.operandView(m.left, `${path}.left`, 'left'));
    parts.push(opSelect);
    if (m.kind === 'compare') parts.push(this.operandView(m.right, `${path}.right`, 'right'));
    if (m.kind === 'channel') {
      parts.push(this.operandView(m.lower, `${path}.lower`, 'lower'), el('span', { text: 'and' }),
                 this.operandView(m.upper, `${path}.upper`, 'upper'));
    }
    if (m.kind === 'moving') {
      const key = m.op.endsWith('_pct') ? 'percent' : 'amount';
      parts.push(this.input(m, 'amount', `${path}.${key}`, key === 'percent' ? '%' : 'amount', 7),
                 el('select', { onchange: (ev) => { m.span = ev.target.value; rerender(); } },
                   el('option', { value: 'bars', text: 'within bars', selected: m.span === 'bars' }),
                   el('option', { value: 'window', text: 'within time', selected: m.span === 'window' })),
                 m.span === 'window' ? this.input(m, 'window', `${path}.window`, 'e.g. 10m', 6)
                   : this.input(m, 'bars', `${path}.bars`, 'bars', 4));
    }
    if (m.kind === 'spike') {
      parts.push(el('span', { text: '×' }), this.input(m, 'factor', `${path}.factor`, 'factor', 4),
                 el('span', { text: 'avg volume of' }), this.input(m, 'period', `${path}.period`, 'bars', 4));
    }
    const where = el('details', { className: 'where', open: Boolean(m.timeframe || m.symbol) },
      el('summary', { text: 'on another series' }),
      el('select', { dataset: { path: `${path}.timeframe` }, onchange: (ev) => { m.timeframe = ev.target.value; this.preview(); } },
        el('option', { value: '', text: 'this timeframe' }),
        ...TIMEFRAMES.map((tf) => el('option', { value: tf, text: tf, selected: tf === m.timeframe }))),
      this.input(m, 'symbol', `${path}.symbol`, 'this symbol', 10));
    return el('div', { className: 'leaf', dataset: { path } }, ...parts, where,
      parent.children.length > 1 ? el('button', { type: 'button', text: '✕', title: 'remove this condition',
        onclick: () => { parent.children.splice(parent.children.indexOf(m), 1); rerender(); } }) : null);
  }

  input(model, key, path, placeholder, size) {
    return el('input', { value: model[key], placeholder, size, dataset: { path },
                         oninput: (ev) => { model[key] = ev.target.value; } });
  }

  operandView(o, path, role) {
    const rerender = () => this.renderCondition();
    const kind = el('select', { className: 'operand-kind', dataset: { role }, onchange: (ev) => { o.kind = ev.target.value; rerender(); } },
      el('option', { value: 'field', text: 'price/field', selected: o.kind === 'field' }),
      el('option', { value: 'number', text: 'value', selected: o.kind === 'number' }),
      el('option', { value: 'indicator', text: 'indicator', selected: o.kind === 'indicator' }));
    const box = el('span', { className: `operand ${role}`, dataset: { path } }, kind);
    if (o.kind === 'field') {
      box.append(el('select', { className: 'field-name', onchange: (ev) => { o.field = ev.target.value; this.preview(); } },
        ...FIELDS.map((f) => el('option', { value: f, text: f, selected: f === o.field }))));
    } else if (o.kind === 'number') {
      box.append(el('input', { className: 'number', value: o.number, size: 9, placeholder: 'e.g. 60000', inputMode: 'decimal',
                               oninput: (ev) => { o.number = ev.target.value; } }));
    } else {
      box.append(el('select', { className: 'indicator', onchange: (ev) => { o.ind = ev.target.value; o.params = {}; rerender(); } },
        ...Object.keys(INDICATORS).map((k) => el('option', { value: k, text: k, selected: k === o.ind }))));
      for (const [param, fallback, choices] of INDICATORS[o.ind]) {
        if (o.params[param] === undefined) o.params[param] = param === SHORT[o.ind] || !choices ? fallback : '';
        const p = `${path}.${o.ind}.${param}`;
        const set = (ev) => { o.params[param] = ev.target.value; this.preview(); };
        box.append(el('label', { className: 'param' }, `${param} `, choices
          ? el('select', { dataset: { path: p, param }, onchange: set }, ...[...(param === SHORT[o.ind] ? [] : ['']), ...choices]
            .filter((x, i, all) => all.indexOf(x) === i)
            .map((x) => el('option', { value: x, text: x === '' ? `(${fallback || 'none'})` : x, selected: x === o.params[param] })))
          : el('input', { value: o.params[param], size: 4, dataset: { path: p, param }, oninput: set })));
      }
    }
    return box;
  }
}
