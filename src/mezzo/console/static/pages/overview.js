// Overview: is the node up, is every module ready, which version and modules run, recent changes.
import { ApiError, api, card, clear, facts, fmtTime, h, heading, inlineError, loading, statusBadge, table } from "../lib.js";

async function readiness() {
  const [ready, health, schema] = await Promise.all([
    api("GET", "/readyz", { allow: [503] }),
    api("GET", "/healthz"),
    api("GET", "/openapi.json"),
  ]);
  return { ready, health, schema };
}

function modulesCard(ready) {
  const modules = Object.entries(ready.modules || {}).map(([name, m]) => ({ name, ...m }));
  return card("Modules",
    table([
      { label: "module", value: (m) => h("strong", {}, m.name) },
      { label: "ready", value: (m) => statusBadge(m.ok ? "ok" : "failed") },
      { label: "detail", value: (m) => m.detail },
    ], modules, { empty: "The node reported no modules." }));
}

async function membersCard() {
  try {
    const members = await api("GET", "/v1/registry/members");
    return card("Nodes sharing this store",
      table([
        { label: "node", value: (m) => (m.id === members.self ? h("span", {}, m.id, " ", h("span", { class: "muted" }, "(this node)")) : m.id) },
        { label: "lease until", value: (m) => fmtTime(m.expiresAt) },
      ], members.items, { empty: "No live members." }));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return card("Nodes", h("p", { class: "muted" }, "The registry module is not running on this node."));
    return card("Nodes", inlineError(err));
  }
}

async function auditCard() {
  const since = new Date(Date.now() - 7 * 86400 * 1000).toISOString();
  try {
    const audit = await api("GET", "/v1/audit", { query: { since, limit: 30, newest: true } });
    const recent = audit.items || [];  // newest first
    return card("Recent changes (last 7 days, newest first)",
      table([
        { label: "when", value: (r) => fmtTime(r.at) },
        { label: "who", value: (r) => r.user },
        { label: "action", value: (r) => r.action },
        { label: "what", value: (r) => [r.kind, r.namespace, r.name].filter(Boolean).join(" / ") },
      ], recent, { empty: "No changes recorded in the last 7 days." }));
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) {
      return card("Recent changes", h("p", { class: "muted" }, "The audit log across namespaces needs an admin token."));
    }
    return card("Recent changes", inlineError(err));
  }
}

export default {
  id: "overview",
  title: "Overview",
  async render(ctx) {
    const body = h("div", { class: "grid" }, loading());
    clear(ctx.root, heading("Overview", () => this.render(ctx)), body);
    const { ready, health, schema } = await readiness();
    const info = schema.info || {};
    const modules = Object.keys(ready.modules || {});
    const status = card("Node",
      facts([
        ["readiness", statusBadge(ready.status)],
        ["liveness", statusBadge(health.status)],
        ["version", `${info.title || "Mezzo"} ${info.version || "?"}`],
        ["modules running", modules.join(", ")],
        ["API", window.location.origin],
        ["API reference", h("a", { href: "/docs", target: "_blank", rel: "noopener noreferrer" }, "/docs (OpenAPI)")],
      ]));
    clear(body, status, modulesCard(ready));
    const [members, audit] = await Promise.all([membersCard(), auditCard()]);
    if (ctx.current) body.append(members, audit);
  },
};
