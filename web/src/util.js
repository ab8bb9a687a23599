// Shared helpers: the API with its bearer token, number and time formatting, symbol patterns.

export const $ = (id) => document.getElementById(id);

export const query = new URLSearchParams(location.search);
export const hash = new URLSearchParams(location.hash.slice(1));
// ?series= (shareable) or #series= (older links); ?token= / #token= as well
export const param = (name) => query.get(name) ?? hash.get(name);

export const auth = { token: param('token') || localStorage.getItem('sentinel.token') || '' };

export class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

export async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (auth.token) headers.Authorization = `Bearer ${auth.token}`;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $('token').focus();
    throw new ApiError('the API wants a bearer token (enter it top right)', 401);
  }
  return response;
}

export async function json(path) {
  const r = await api(path);
  if (!r.ok) throw new ApiError(`${path}: ${r.status}`, r.status);
  return r.json();
}

// The API's error text of a failed response: `detail` is a string, a list of `file:line: field — problem` lines, or
// FastAPI's validation errors (objects with `msg`).
export async function errorLines(r) {
  let detail;
  try { detail = (await r.json()).detail; } catch (e) { return [`${r.status} ${r.statusText}`]; }
  if (Array.isArray(detail)) return detail.map((d) => (typeof d === 'string' ? d : d.msg || JSON.stringify(d)));
  return [detail ? String(detail) : `${r.status} ${r.statusText}`];
}

// Exact decimal strings without trailing zeros ("61717.63000000" -> "61717.63"); numbers as they are.
export function plain(value) {
  if (value === null || value === undefined || value === '') return '–';
  const s = String(value);
  if (!/^-?\d+(\.\d+)?$/.test(s)) return s;
  if (!s.includes('.')) return s;
  const out = s.replace(/0+$/, '').replace(/\.$/, '');
  return out === '-0' ? '0' : out;
}

export const num = (s) => (s === null || s === undefined ? null : Number(s));
export const sec = (ms) => Math.floor(ms / 1000);
export const fmtTime = (ms) => new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z';
export const fmtShort = (ms) => new Date(ms).toISOString().slice(5, 16).replace('T', ' ');

export const TIMEFRAMES = ['1s', '1m', '3m', '5m', '15m', '30m', '1h', '2h', '4h', '6h', '12h', '1d', '1w'];
const UNIT = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
export const tfMs = (tf) => Number(tf.slice(0, -1)) * UNIT[tf.slice(-1)];

// A rule's `symbols` is a list, one symbol, or a glob pattern ("*/USDT"); fnmatch semantics (case-sensitive).
export const symbolsOf = (rule) => (Array.isArray(rule.symbols) ? rule.symbols : rule.symbols ? [String(rule.symbols)] : []);

function globRegex(pattern) {
  let out = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*') out += '.*';
    else if (c === '?') out += '.';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 1);
      if (end < 0) { out += '\\['; continue; }
      let body = pattern.slice(i + 1, end);
      if (body.startsWith('!')) body = `^${body.slice(1)}`;
      out += `[${body.replace(/\\/g, '\\\\')}]`;
      i = end;
    } else out += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`^${out}$`);
}

export function ruleMatches(rule, series) {
  if (!series) return false;
  if (rule.exchange && rule.exchange !== series.exchange) return false;
  return symbolsOf(rule).some((s) => (/[*?[]/.test(s) ? globRegex(s).test(series.symbol) : s === series.symbol));
}

export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'className' || k === 'value' || (k in node && typeof v !== 'string')) node[k] = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}
