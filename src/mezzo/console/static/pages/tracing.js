// Tracing: search traces through the Jaeger query API, and one trace as a waterfall of its spans.
import {
  api, badge, button, card, cell, clear, facts, fmtMicros, fmtTime, guard, h, heading, loading, p, select, table,
} from "../lib.js";

const LOOKBACKS = [["15m", "last 15 minutes"], ["1h", "last hour"], ["6h", "last 6 hours"], ["24h", "last day"], ["168h", "last 7 days"]];
const LIMITS = ["20", "50", "100", "500"];
const COLORS = 8;

function colorOf(service) {
  let hash = 0;
  for (const ch of service) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `svc-${hash % COLORS}`;
}

function tagValue(tags, key) {
  const found = (tags || []).find((t) => t.key === key);
  return found ? found.value : undefined;
}

function isError(span) {
  const v = tagValue(span.tags, "error");
  return v === true || v === "true";
}

function parentOf(span) {
  const ref = (span.references || []).find((r) => r.refType === "CHILD_OF");
  return ref ? ref.spanID : null;
}

/** Spans in tree order (each parent before its children, siblings by start) with their depth. */
function ordered(trace) {
  const byId = new Map(trace.spans.map((s) => [s.spanID, s]));
  const children = new Map();
  const roots = [];
  for (const span of trace.spans) {
    const parent = parentOf(span);
    if (parent && byId.has(parent)) children.set(parent, [...(children.get(parent) || []), span]);
    else roots.push(span);
  }
  const out = [];
  const byStart = (a, b) => a.startTime - b.startTime;
  const walk = (span, depth) => {
    out.push({ span, depth });
    for (const child of (children.get(span.spanID) || []).sort(byStart)) walk(child, depth + 1);
  };
  for (const root of roots.sort(byStart)) walk(root, 0);
  return out;
}

function summary(trace) {
  const start = Math.min(...trace.spans.map((s) => s.startTime));
  const end = Math.max(...trace.spans.map((s) => s.startTime + s.duration));
  const rows = ordered(trace);
  const root = rows.length ? rows[0].span : null;
  const services = new Set(trace.spans.map((s) => (trace.processes[s.processID] || {}).serviceName));
  return {
    id: trace.traceID, start, duration: end - start, spans: trace.spans.length, services: [...services].filter(Boolean),
    errors: trace.spans.filter(isError).length,
    root: root ? `${(trace.processes[root.processID] || {}).serviceName || "?"}: ${root.operationName}` : "",
  };
}

function spanDetail(trace, span, box) {
  const process = trace.processes[span.processID] || {};
  const tagRows = (tags) => table([
    { label: "key", value: (t) => t.key },
    { label: "value", value: (t) => h("code", {}, cell(t.value)) },
  ], tags || [], { empty: "None." });
  clear(box,
    h("h4", {}, `${process.serviceName || "?"}: ${span.operationName}`),
    facts([
      ["span id", span.spanID], ["parent", parentOf(span) || "(root)"], ["start", fmtTime(span.startTime)],
      ["duration", fmtMicros(span.duration)],
      ["links", (span.references || []).filter((r) => r.refType !== "CHILD_OF").map((r) => `${r.traceID}/${r.spanID}`).join(", ")],
    ]),
    h("h4", {}, "Tags"), tagRows(span.tags),
    (span.logs || []).length ? [h("h4", {}, "Events"), table([
      { label: "at", value: (l) => `+${fmtMicros(l.timestamp - span.startTime)}` },
      { label: "fields", value: (l) => (l.fields || []).map((f) => `${f.key}=${cell(f.value)}`).join("  ") },
    ], span.logs)] : null,
    h("h4", {}, "Process"), tagRows(process.tags));
}

async function showTrace(ctx, traceId, pane) {
  clear(pane, loading());
  const [data, critical] = await Promise.all([
    api("GET", p`/api/traces/${traceId}`),
    api("GET", p`/v1/traces/${traceId}:critical-path`).catch(() => ({ items: [] })),  // optional highlight
  ]);
  if (!ctx.current) return;
  const trace = (data.data || [])[0];
  if (!trace || !trace.spans.length) { clear(pane, h("p", { class: "empty" }, `Trace ${traceId} has no spans.`)); return; }
  const info = summary(trace);
  const onPath = new Set((critical.items || []).map((c) => c.spanId));
  const total = Math.max(info.duration, 1);
  const box = h("div", { class: "span-detail" }, h("p", { class: "muted" }, "Pick a span for its tags and events."));
  const ruler = h("div", { class: "wf-row wf-ruler" }, h("div", { class: "wf-label" }, "service: operation"),
    h("div", { class: "wf-track" }, [0, 0.25, 0.5, 0.75, 1].map((f) => {
      const tick = h("span", { class: "wf-tick" }, fmtMicros(Math.round(total * f)));
      tick.style.left = `${f * 100}%`;
      return tick;
    })), h("div", { class: "wf-dur" }, "duration"));
  const rows = ordered(trace).map(({ span, depth }) => {
    const service = (trace.processes[span.processID] || {}).serviceName || "?";
    const bar = h("div", { class: `wf-bar ${colorOf(service)}${isError(span) ? " error" : ""}${onPath.has(span.spanID) ? " critical" : ""}` });
    bar.style.left = `${((span.startTime - info.start) / total) * 100}%`;
    bar.style.width = `${Math.max((span.duration / total) * 100, 0.3)}%`;
    const label = h("div", { class: "wf-label", title: `${service}: ${span.operationName}` },
      h("span", { class: `wf-svc ${colorOf(service)}` }, service), " ", span.operationName,
      isError(span) ? [" ", badge("error", "bad")] : null);
    label.style.paddingLeft = `${0.4 + depth * 1.1}rem`;
    const row = h("div", { class: "wf-row clickable", tabindex: "0" }, label, h("div", { class: "wf-track" }, bar),
      h("div", { class: "wf-dur" }, fmtMicros(span.duration)));
    const pick = () => {
      for (const other of row.parentElement.querySelectorAll(".wf-row")) other.classList.toggle("selected", other === row);
      spanDetail(trace, span, box);
    };
    row.addEventListener("click", pick);
    row.addEventListener("keydown", (ev) => { if (ev.key === "Enter") pick(); });
    return row;
  });
  clear(pane,
    h("h3", {}, `Trace ${info.id}`),
    facts([["root", info.root], ["start", fmtTime(info.start)], ["duration", fmtMicros(info.duration)],
      ["spans", info.spans], ["services", info.services.join(", ")], ["errors", info.errors || ""],
      ["critical path", onPath.size ? "outlined spans set the trace's latency" : ""]]),
    h("div", { class: "waterfall" }, ruler, rows),
    box);
}

export default {
  id: "tracing",
  title: "Tracing",
  async render(ctx) {
    const state = {
      service: ctx.params.get("service") || "", operation: ctx.params.get("operation") || "",
      lookback: ctx.params.get("lookback") || "1h", limit: ctx.params.get("limit") || "20",
      minDuration: ctx.params.get("minDuration") || "", trace: ctx.params.get("trace") || "",
    };
    const remember = () => ctx.setParams(state);
    const form = h("form", { class: "toolbar" });
    const results = h("div", { class: "list-pane" });
    const detail = h("div", { class: "trace-pane" });
    clear(ctx.root, heading("Tracing", () => this.render(ctx)), form, results, detail);
    const services = (await api("GET", "/api/services")).data || [];
    if (!ctx.current) return;
    if (!state.service && services.length) state.service = services[0];
    const opSelect = h("span");
    const loadOperations = async () => {
      const ops = state.service ? (await api("GET", p`/api/services/${state.service}/operations`)).data || [] : [];
      clear(opSelect, select([["", "all operations"], ...ops], state.operation, (v) => { state.operation = v; }, { "aria-label": "operation" }));
    };
    const minDuration = h("input", { type: "text", size: "7", placeholder: "e.g. 100ms", value: state.minDuration, "aria-label": "minimum duration" });
    const traceInput = h("input", { type: "search", size: "34", placeholder: "trace id", spellcheck: "false", value: state.trace, "aria-label": "trace id" });
    const openTrace = (id) => {
      state.trace = id;
      remember();
      return guard(() => showTrace(ctx, id, detail));
    };
    const search = () => guard(async () => {
      state.minDuration = minDuration.value.trim();
      remember();
      clear(results, loading());
      const data = await api("GET", "/api/traces", { query: {
        service: state.service, operation: state.operation, lookback: state.lookback, limit: state.limit,
        minDuration: state.minDuration } });
      if (!ctx.current) return;
      const found = (data.data || []).filter((t) => t.spans && t.spans.length).map((t) => summary(t)).sort((a, b) => b.start - a.start);
      clear(results, card(`Traces (${found.length})`, table([
        { label: "start", value: (t) => fmtTime(t.start) },
        { label: "root", value: (t) => t.root },
        { label: "trace id", value: (t) => h("code", {}, t.id) },
        { label: "spans", value: (t) => t.spans, class: "num" },
        { label: "services", value: (t) => t.services.join(", ") },
        { label: "duration", value: (t) => fmtMicros(t.duration), class: "num" },
        { label: "errors", value: (t) => (t.errors ? badge(String(t.errors), "bad") : ""), class: "num" },
      ], found, {
        onSelect: (t, tr) => { for (const row of tr.parentElement.children) row.classList.toggle("selected", row === tr); openTrace(t.id); },
        isSelected: (t) => t.id === state.trace,
        empty: "No traces match. Widen the time window or pick another service.",
      })));
    });
    clear(form,
      services.length
        ? select(services, state.service, (v) => { state.service = v; state.operation = ""; guard(loadOperations); }, { "aria-label": "service" })
        : h("span", { class: "muted" }, "No services have sent spans yet."),
      opSelect,
      select(LOOKBACKS, state.lookback, (v) => { state.lookback = v; }, { "aria-label": "time window" }),
      select(LIMITS.map((l) => [l, `${l} traces`]), state.limit, (v) => { state.limit = v; }, { "aria-label": "limit" }),
      h("label", {}, "min ", minDuration),
      h("button", { type: "submit", class: "primary" }, "Search"),
      h("span", { class: "spacer" }),
      traceInput, button("Open trace", () => { const id = traceInput.value.trim(); if (id) openTrace(id); }));
    form.addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
    traceInput.addEventListener("keydown", (ev) => {
      if (ev.key !== "Enter") return;
      ev.preventDefault();  // Enter here opens the trace instead of submitting the search
      const id = traceInput.value.trim();
      if (id) openTrace(id);
    });
    await loadOperations();
    if (services.length) await search();
    if (state.trace) await openTrace(state.trace);
  },
};
