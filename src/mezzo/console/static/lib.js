// The one way the console talks to the API (api), and the DOM helpers every page builds with.
// Nothing here parses HTML: API data reaches the page only as text nodes and attribute values.

const TOKEN_KEY = "mezzo.console.token";

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** An API answer that was not a success: status plus the problem document (RFC 9457) or a stand-in. */
export class ApiError extends Error {
  constructor(status, problem, method, path) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.method = method;
    this.path = path;
  }
}

let unauthorized = () => {};
/** What to do when a call answers 401 (app.js: back to the login screen). */
export function onUnauthorized(handler) { unauthorized = handler; }

function segment(value) {
  const text = encodeURIComponent(String(value));
  return text === "." ? "%2E" : text === ".." ? "%2E%2E" : text;  // a dot segment would be resolved away
}

/** Path template tag: p`/v1/topics/${name}/groups` encodes each ${...} as one path segment. */
export function p(strings, ...values) {
  return strings.reduce((out, part, i) => out + part + (i < values.length ? segment(values[i]) : ""), "");
}

/**
 * Call the API: api("GET", "/v1/kinds") or api("POST", p`/v1/tx/transactions/${gid}:retry`).
 * Paths are literal templates (tests check each against the node's routes); query values that are
 * undefined, null or "" are left out; `allow` lists error statuses whose body is still wanted (readyz's 503).
 */
export async function api(method, path, { query = {}, body, allow = [] } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null || value === "") continue;
    for (const one of Array.isArray(value) ? value : [value]) url.searchParams.append(key, String(one));
  }
  const headers = { Accept: "application/json, application/problem+json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body: payload, cache: "no-store", credentials: "omit" });
  } catch (err) {
    throw new ApiError(0, { title: "The node did not answer", detail: String(err && err.message || err) }, method, path);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (response.ok || allow.includes(response.status)) return data;
  const problem = data && typeof data === "object" && !Array.isArray(data) ? data
    : { title: response.statusText || `HTTP ${response.status}`, detail: typeof data === "string" ? data.slice(0, 500) : undefined };
  const error = new ApiError(response.status, problem, method, path);
  if (response.status === 401) unauthorized(error);
  throw error;
}

// ---- DOM ----------------------------------------------------------------------------------

/** h("div", {class: "x", onclick: fn, title: "t"}, "text", child, [more]) — text children become text nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "value") el.value = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// ---- errors -------------------------------------------------------------------------------

/** The lines an error shows: title, detail, each field error, and the call that failed. */
export function describe(err) {
  if (!(err instanceof ApiError)) return { title: "Console error", lines: [String(err && err.stack || err)] };
  const pr = err.problem || {};
  const lines = [];
  if (pr.detail) lines.push(pr.detail);
  for (const e of Array.isArray(pr.errors) ? pr.errors : []) {
    const where = e.field || e.name || (e.document !== undefined ? `document ${e.document}` : "");
    lines.push(`${where ? `${where}: ` : ""}${e.reason || e.message || JSON.stringify(e)}`);
  }
  const status = err.status ? `${err.status} ` : "";
  return { title: `${status}${pr.title || "Error"}`, lines, call: `${err.method} ${err.path}` };
}

/** An error in place (a card that could not load), for errors the page expects, e.g. a 403. */
export function inlineError(err) {
  const d = describe(err);
  return h("div", { class: "inline-error" }, h("strong", {}, d.title), d.lines.map((l) => h("div", {}, l)),
    d.call ? h("div", { class: "muted small" }, d.call) : null);
}

let banner = null;
export function bannerInto(el) { banner = el; }

export function showError(err) {
  if (!banner) { console.error(err); return; }
  const d = describe(err);
  banner.className = "banner error";
  clear(banner,
    h("button", { class: "banner-close", type: "button", "aria-label": "Dismiss", onclick: hideBanner }, "×"),
    h("strong", {}, d.title), d.lines.map((l) => h("div", {}, l)),
    d.call ? h("div", { class: "muted small" }, d.call) : null);
  banner.hidden = false;
}

export function showNotice(text) {
  if (!banner) return;
  banner.className = "banner notice";
  clear(banner, h("button", { class: "banner-close", type: "button", "aria-label": "Dismiss", onclick: hideBanner }, "×"), text);
  banner.hidden = false;
}

export function hideBanner() { if (banner) { banner.hidden = true; banner.replaceChildren(); } }

/** Run an async action; any error goes to the banner. Returns the action's result or undefined. */
export async function guard(action) {
  try { return await action(); } catch (err) { showError(err); return undefined; }
}

// ---- building blocks ----------------------------------------------------------------------

/**
 * A table. columns: [{label, value: row => text|Node, class}]; onSelect(row) makes rows clickable;
 * isSelected(row) marks the current one.
 */
export function table(columns, rows, { onSelect, isSelected, empty = "Nothing here." } = {}) {
  if (!rows || rows.length === 0) return h("p", { class: "empty" }, empty);
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.class }, c.label)));
  const body = rows.map((row) => {
    const tr = h("tr", { class: [onSelect ? "clickable" : "", isSelected && isSelected(row) ? "selected" : ""].join(" ").trim() || undefined },
      columns.map((c) => { const v = c.value(row); return h("td", { class: c.class }, v === undefined || v === null ? "" : v); }));
    if (onSelect) {
      tr.tabIndex = 0;
      tr.addEventListener("click", () => onSelect(row, tr));
      tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") onSelect(row, tr); });
    }
    return tr;
  });
  return h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, head), h("tbody", {}, body)));
}

/** A table of whatever keys the objects have (for shapes that vary by engine). */
export function autoTable(items, options) {
  const keys = [];
  for (const item of items || []) for (const key of Object.keys(item || {})) if (!keys.includes(key)) keys.push(key);
  return table(keys.map((key) => ({ label: key, value: (row) => cell(row[key]) })), items, options);
}

export function cell(value) {
  if (value === undefined || value === null) return "";
  if (Array.isArray(value)) return value.map((v) => (typeof v === "object" ? JSON.stringify(v) : String(v))).join(", ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** Definition list of [label, value] pairs; empty values are skipped. */
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v instanceof Node ? v : cell(v))]));
}

export function jsonView(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function badge(text, tone = "") {
  return h("span", { class: `badge ${tone}`.trim() }, text);
}

const TONES = { ok: "good", ready: "good", passing: "good", succeed: "good", healthy: "good", true: "good",
  failed: "bad", critical: "bad", "not ready": "bad", false: "bad", ejected: "bad", down: "bad",
  aborting: "warn", submitted: "info", prepared: "info" };
export function statusBadge(status) { return badge(String(status), TONES[String(status)] || ""); }

export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h3", {}, title) : null, children);
}

/** Page heading with a refresh button (and extra controls). */
export function heading(title, onRefresh, ...extra) {
  return h("div", { class: "page-head" }, h("h2", {}, title), h("div", { class: "page-actions" }, extra,
    onRefresh ? h("button", { type: "button", onclick: onRefresh, title: "Reload from the node" }, "Refresh") : null));
}

export function button(label, onclick, cls = "") {
  return h("button", { type: "button", class: cls || undefined, onclick }, label);
}

export function select(options, value, onchange, attrs = {}) {
  return h("select", { ...attrs, onchange: (ev) => onchange(ev.target.value) },
    options.map((o) => { const [v, label] = Array.isArray(o) ? o : [o, o]; return h("option", { value: v, selected: v === value }, label); }));
}

export function loading() { return h("p", { class: "muted" }, "Loading…"); }

// ---- formatting ---------------------------------------------------------------------------

export function fmtTime(value) {
  if (value === undefined || value === null || value === "") return "";
  const date = typeof value === "number" ? new Date(value > 1e14 ? value / 1000 : value > 1e11 ? value : value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

export function fmtBytes(n) {
  if (n === undefined || n === null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n); let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

/** Microseconds as a short duration. */
export function fmtMicros(us) {
  if (us === undefined || us === null) return "";
  if (us < 1000) return `${us} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

export function fmtRatio(r) { return r === null || r === undefined ? "–" : `${(r * 100).toFixed(1)} %`; }

/** A value at a dotted path of an object (kind columns are paths into spec). */
export function dig(obj, path) {
  return path.split(".").reduce((v, key) => (v === undefined || v === null ? undefined : v[key]), obj);
}

/** Namespaces the pages have seen, offered by the namespace picker in the top bar. */
export function rememberNamespaces(names) {
  const list = document.getElementById("namespaces");
  if (!list) return;
  const known = new Set([...list.querySelectorAll("option")].map((o) => o.value));
  for (const name of names) {
    if (name && !known.has(name)) { known.add(name); list.append(h("option", { value: name })); }
  }
}
