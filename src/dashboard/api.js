// The dashboard's calls to the l2flow HTTP API, the API token and the message line.

const TOKEN_KEY = 'l2flow.token';

/** An answer of the API that is not 2xx: its message names the field at fault. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = error?.code;
    this.field = error?.field;
  }
}

/** GET a JSON answer. */
export async function get(path) {
  const res = await fetch(path, { headers: { accept: 'application/json' } });
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, body?.error);
  return body;
}

/**
 * POST JSON. Writes need the bearer token when the server has one: on a 401 the page asks for it once, keeps it
 * in sessionStorage (gone when the tab closes) and tries again.
 */
export async function post(path, body) {
  for (let asked = false; ; asked = true) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { 'content-type': 'application/json', accept: 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const res = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body ?? {}) });
    const answer = await res.json().catch(() => null);
    if (res.status === 401 && !asked) {
      const given = window.prompt('This server needs the API token (the secret part of L2FLOW_API_TOKEN):');
      if (!given) throw new ApiError(401, answer?.error);
      sessionStorage.setItem(TOKEN_KEY, given.trim());
      continue;
    }
    if (res.status === 401) sessionStorage.removeItem(TOKEN_KEY);
    if (!res.ok) throw new ApiError(res.status, answer?.error);
    return answer;
  }
}

/** Show one line above the page: `error` in red, else a notice. */
export function say(text, kind = 'info') {
  const p = document.getElementById('message');
  p.textContent = text;
  p.className = `message ${kind}`;
  p.hidden = !text;
}

/** Create an element: `el('td', { class: 'x', title: 'y' }, 'text', child)`. Text is never parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}

/** A time as the operator's browser shows it, or '–'. */
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : '–');

/** A duration in ms as "1 h 2 min", "3 min 4 s", "5.6 s". */
export function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return '–';
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  const min = Math.floor(ms / 60_000);
  if (min < 60) return `${min} min ${Math.round((ms % 60_000) / 1000)} s`;
  return `${Math.floor(min / 60)} h ${min % 60} min`;
}

/** Today in the browser's time zone, YYYY-MM-DD. */
export function today() {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}
