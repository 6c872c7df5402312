// Transactions: filter and page through global transactions; one with its branches; retry and abort.
import {
  api, button, card, clear, facts, fmtTime, guard, h, heading, jsonView, loading, p, select, showError,
  showNotice, statusBadge, table,
} from "../lib.js";

const STATUSES = [["", "any status"], "prepared", "submitted", "aborting", "succeed", "failed"];
const MODES = [["", "any mode"], "saga", "tcc", "xa", "msg"];
const LIMIT = 50;

function traceIdOf(traceparent) {
  const parts = (traceparent || "").split("-");
  return parts.length >= 3 && /^[0-9a-f]{32}$/.test(parts[1]) ? parts[1] : null;
}

function payload(text) {
  if (!text) return "";
  try { return JSON.stringify(JSON.parse(text)); } catch { return text; }
}

async function showTx(ctx, gid, pane, onChange) {
  clear(pane, loading());
  const tx = await api("GET", p`/v1/tx/transactions/${gid}`);
  if (!ctx.current) return;
  const act = (verb, call) => button(verb, () => guard(async () => {
    if (verb === "Abort" && !window.confirm(`Abort transaction ${gid}? Its done branches are compensated or rolled back.`)) return;
    try {
      const after = await call();
      showNotice(`${verb}: transaction ${gid} is now ${after.status}.`);
    } catch (err) {
      showError(err);  // e.g. 409 when the transaction is already final, 403 without the operator role
    }
    await showTx(ctx, gid, pane, onChange);
    onChange();
  }), verb === "Abort" ? "danger" : "primary");
  const traceId = traceIdOf(tx.traceparent);
  const final = tx.status === "succeed" || tx.status === "failed";
  const branchBox = h("div", { class: "branch-box" });
  clear(pane,
    h("div", { class: "detail-head" }, h("h3", {}, `Transaction ${tx.gid}`),
      h("div", { class: "actions" },
        act("Retry", () => api("POST", p`/v1/tx/transactions/${gid}:retry`)),
        act("Abort", () => api("POST", p`/v1/tx/transactions/${gid}:abort`)))),
    final ? h("p", { class: "muted small" }, "This transaction is final: the node will refuse retry and abort, and say why.") : null,
    facts([
      ["status", statusBadge(tx.status)], ["mode", tx.mode], ["namespace", tx.namespace],
      ["created", `${fmtTime(tx.created)}${tx.created_by ? ` by ${tx.created_by}` : ""}`],
      ["updated", fmtTime(tx.updated)], ["finished", fmtTime(tx.finished)],
      ["failed rounds", tx.attempts], ["rollback reason", tx.rollback_reason],
      ["query prepared", tx.query_prepared], ["custom data", tx.custom_data],
      ["trace", traceId ? h("a", { href: `#/tracing?trace=${traceId}` }, traceId) : ""],
    ]),
    card("Branches", table([
      { label: "branch", value: (b) => b.branch_id },
      { label: "op", value: (b) => b.op },
      { label: "status", value: (b) => statusBadge(b.status) },
      { label: "tried", value: (b) => (b.attempted ? "yes" : "no") },
      { label: "url", value: (b) => h("code", { class: "clip" }, b.url) },
      { label: "finished", value: (b) => fmtTime(b.finished) },
      { label: "result", value: (b) => h("code", { class: "clip" }, b.result || "") },
    ], tx.branches || [], { empty: "No branches registered.", onSelect: (b) => clear(branchBox, h("h4", {}, `Branch ${b.branch_id} ${b.op}`), jsonView({ ...b, data: payload(b.data) })) })),
    branchBox,
    card("Steps and payloads", table([
      { label: "#", value: (s) => s.index + 1, class: "num" },
      { label: "action", value: (s) => h("code", { class: "clip" }, s.action) },
      { label: "compensate", value: (s) => h("code", { class: "clip" }, s.compensate || "") },
      { label: "payload", value: (s) => h("code", { class: "clip" }, payload(s.payload)) },
    ], (tx.steps || []).map((s, index) => ({ ...s, index, payload: tx.payloads[index] })), { empty: "No steps (TCC and XA register branches instead)." })),
    card("Options", jsonView(tx.options)));
}

export default {
  id: "transactions",
  title: "Transactions",
  async render(ctx) {
    const state = {
      status: ctx.params.get("status") || "",
      mode: ctx.params.get("mode") || "",
      after: ctx.params.get("after") || "",
      previous: [],  // cursors of the pages before this one
      gid: ctx.params.get("gid") || "",
    };
    const list = h("div", { class: "list-pane" });
    const detail = h("div", { class: "detail-pane" }, h("p", { class: "muted" }, "Pick a transaction."));
    const remember = () => ctx.setParams({ status: state.status, mode: state.mode, after: state.after, gid: state.gid });
    const load = () => guard(async () => {
      remember();
      clear(list, loading());
      const data = await api("GET", "/v1/tx/transactions",
        { query: { status: state.status, mode: state.mode, after: state.after, limit: LIMIT } });
      if (!ctx.current) return;
      const items = data.items || [];
      const pager = h("div", { class: "toolbar" },
        state.previous.length ? button("← Previous", () => { state.after = state.previous.pop(); load(); }) : null,
        data.next ? button("Next →", () => { state.previous.push(state.after); state.after = data.next; load(); }) : null,
        h("span", { class: "muted small" }, `${items.length} shown${data.next ? ", more after" : ""}`));
      clear(list, table([
        { label: "gid", value: (t) => h("code", {}, t.gid) },
        { label: "mode", value: (t) => t.mode },
        { label: "status", value: (t) => statusBadge(t.status) },
        { label: "namespace", value: (t) => t.namespace },
        { label: "created", value: (t) => fmtTime(t.created) },
        { label: "updated", value: (t) => fmtTime(t.updated) },
        { label: "rounds", value: (t) => t.attempts, class: "num" },
      ], items, {
        onSelect: (t, tr) => {
          state.gid = t.gid;
          remember();
          for (const row of tr.parentElement.children) row.classList.toggle("selected", row === tr);
          openTx();
        },
        isSelected: (t) => t.gid === state.gid,
        empty: "No transactions match.",
      }), pager);
    });
    const filters = h("div", { class: "toolbar" },
      select(STATUSES, state.status, (v) => { state.status = v; state.after = ""; state.previous = []; load(); }, { "aria-label": "status" }),
      select(MODES, state.mode, (v) => { state.mode = v; state.after = ""; state.previous = []; load(); }, { "aria-label": "mode" }),
      h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault(); const gid = ev.target.elements.gid.value.trim(); if (gid) { state.gid = gid; remember(); openTx(); } } },
        h("input", { name: "gid", type: "search", placeholder: "gid", spellcheck: "false", size: "34" }), h("button", { type: "submit" }, "Open")));
    const openTx = () => guard(() => showTx(ctx, state.gid, detail, load));
    clear(ctx.root, heading("Transactions", () => this.render(ctx)), filters, h("div", { class: "two" }, list, detail));
    await load();
    if (state.gid) await openTx();
  },
};
