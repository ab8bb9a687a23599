// The rules table: every rule the engine runs (rules file and API), whatever its symbols (a list, one symbol, a glob
// pattern) and condition kind; state per series, cooldown, snooze; enable/disable, snooze, edit, delete; the "chart"
// box puts a rule's indicators and levels on the chart.
import { indicatorOf, label } from './indicators.js';
import { $, api, el, errorLines, fmtTime, json, plain, ruleMatches, symbolsOf } from './util.js';

function operandText(v) {
  const ind = indicatorOf(v);
  if (ind) return label(ind);
  return v === undefined ? '' : plain(v);
}

export function describeCondition(c) {
  if (!c || typeof c !== 'object') return '';
  const where = [c.symbol, c.timeframe].filter(Boolean).join(' ');
  const on = where ? ` [on ${where}]` : '';
  if (Array.isArray(c.all)) return `(${c.all.map(describeCondition).join(' and ')})`;
  if (Array.isArray(c.any)) return `(${c.any.map(describeCondition).join(' or ')})`;
  const left = operandText(c.left ?? 'close');
  if (c.op === 'volume_spike') return `volume > ${plain(c.factor)}× avg(${c.period ?? 20})${on}`;
  if (/channel$/.test(c.op)) return `${left} ${c.op.replace('_', ' ')} ${operandText(c.lower)}–${operandText(c.upper)}${on}`;
  if (/^moving_/.test(c.op)) {
    const by = c.percent !== undefined ? `${plain(c.percent)}%` : plain(c.amount);
    const span = c.window ? `within ${c.window}` : `in ${c.bars ?? 1} bar${(c.bars ?? 1) === 1 ? '' : 's'}`;
    return `${left} ${c.op.startsWith('moving_up') ? 'up' : 'down'} ${by} ${span}${on}`;
  }
  return `${left} ${c.op.replace(/_/g, ' ')} ${operandText(c.right)}${on}`;
}

export function symbolsText(rule) {
  const symbols = symbolsOf(rule);
  return (rule.exchange ? `${rule.exchange}: ` : '') + symbols.join(', ');
}

export class RulesTable {
  constructor(state, { onEdit, onChange }) {
    this.state = state;
    this.onEdit = onEdit;
    this.onChange = onChange;
    this.hidden = new Set(JSON.parse(localStorage.getItem('sentinel.hiddenOverlays') || '[]'));
    $('refresh-rules').onclick = () => this.refresh();
  }

  shownOnChart(rule) { return !this.hidden.has(rule.name); }

  message(text, kind = 'error') {
    const box = $('rules-message');
    box.textContent = text || '';
    box.className = `rules-message ${kind}`;
    box.hidden = !text;
    if (kind === 'ok' && text) setTimeout(() => { if (box.textContent === text) box.hidden = true; }, 4000);
  }

  async refresh() {
    let rules; let states;
    try {
      [rules, states] = await Promise.all([json('/rules'), json('/alerts')]);
    } catch (err) { this.message(`rules: ${err.message || err}`); return; }
    this.state.rules = rules.rules;
    const byRule = new Map();
    for (const st of states.rules) {
      if (!byRule.has(st.rule)) byRule.set(st.rule, []);
      byRule.get(st.rule).push(st);
    }
    const names = new Set([...rules.rules.map((r) => r.name), ...byRule.keys()]);
    const rows = [...names].sort().map((name) => this.row(name, rules.rules.find((x) => x.name === name), byRule.get(name) || []));
    $('rules-table').querySelector('tbody').replaceChildren(...rows);
    this.onChange();
  }

  row(name, r, sts) {
    const tr = el('tr', { dataset: { rule: name } });
    if (r && ruleMatches(r.rule, this.state.series) && (r.rule.timeframe || '1m') === this.state.series?.timeframe) {
      tr.classList.add('on-series');
    }
    const firing = sts.filter((x) => x.state === 'firing').length;
    const stateText = sts.length ? sts.map((x) => `${x.symbol} ${x.state}`).join(', ') : 'no data yet';
    const cooldown = Math.max(0, ...sts.map((x) => x.cooldown_left_s));
    const cells = [
      name, r ? symbolsText(r.rule) : '', r ? r.rule.timeframe || '1m' : '',
      r ? describeCondition(r.rule.condition) : '(rules file)', r ? (r.enabled ? 'yes' : 'no') : '', stateText,
      sts.some((x) => x.cooldown_forever) ? 'fired (once)' : cooldown ? `${Math.round(cooldown)}s` : '–',
      r && r.snooze_until ? fmtTime(Date.parse(r.snooze_until)) : '',
    ];
    cells.forEach((text, i) => {
      const td = el('td', { text });
      if (i === 0 && r) {
        const box = el('input', { type: 'checkbox', className: 'show-on-chart', title: 'show its indicators and levels on the chart',
                                  checked: this.shownOnChart(r),
                                  onchange: (ev) => {
                                    if (ev.target.checked) this.hidden.delete(name); else this.hidden.add(name);
                                    localStorage.setItem('sentinel.hiddenOverlays', JSON.stringify([...this.hidden]));
                                    this.onChange();
                                  } });
        td.prepend(box);
        td.append(...badges(r));
      }
      if (i === 5) td.className = firing ? 'firing' : sts.some((x) => x.state === 'pending') ? 'pending' : '';
      tr.append(td);
    });
    const actions = el('td');
    if (r) {
      const button = (text, fn, title) => actions.append(el('button', { text, onclick: fn, title }));
      const fromFile = r.source === 'file';
      const note = fromFile ? ' (stored as an API override of the file\'s rule)' : '';
      button(r.enabled ? 'disable' : 'enable', () => this.action(name, r.enabled ? 'disable' : 'enable', undefined, note));
      button(r.snooze_until ? 'unsnooze' : 'snooze 1h', () => this.action(name, 'snooze', r.snooze_until ? {} : { duration: '1h' }, note));
      button('edit', () => this.onEdit(r), 'open it in the alert form');
      // a rule of the rules file cannot be deleted here (only in the file): disable it instead
      if (r.overrides_file) button('revert to file', () => this.remove(name, true), 'delete the API override; the rules file\'s rule applies again');
      else if (!fromFile) button('delete', () => this.remove(name, false));
    }
    tr.append(actions);
    return tr;
  }

  async action(name, action, body, note = '') {
    try {
      const r = await api(`/rules/${encodeURIComponent(name)}/${action}`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body || {}),
      });
      if (r.ok) this.message(`${action} ${name}: done${note}`, 'ok');
      else this.message(`${action} ${name} failed: ${(await errorLines(r)).join('\n')}`);
    } catch (err) { this.message(`${action} ${name} failed: ${err.message || err}`); }
    this.refresh();
  }

  async remove(name, override) {
    if (!confirm(override ? `delete the API override of ${name}? The rules file's ${name} applies again.` : `delete rule ${name}?`)) return;
    try {
      const r = await api(`/rules/${encodeURIComponent(name)}`, { method: 'DELETE' });
      if (r.ok) this.message(override ? `${name}: the rules file's rule applies again` : `deleted ${name}`, 'ok');
      else this.message(`delete ${name} failed: ${(await errorLines(r)).join('\n')}`);
    } catch (err) { this.message(`delete ${name} failed: ${err.message || err}`); }
    this.refresh();
  }
}

function badges(r) {
  const out = [];
  const badge = (text, cls, title) => out.push(el('span', { className: `badge ${cls}`, text, title }));
  if (r.source === 'file') badge('file', 'file', 'from the alert engine\'s rules file: change it there, or disable/snooze/edit it here (stored as an API override)');
  else if (r.overrides_file) badge('override', 'override', 'an API rule replacing the rules file\'s rule of the same name');
  return out;
}
