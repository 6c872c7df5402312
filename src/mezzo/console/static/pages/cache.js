// Cache: embedded namespaces with their statistics, hot and big keys, a key browser; declared Cache
// resources with their backend nodes (distributed namespaces keep their keys and statistics on those nodes).
import {
  ApiError, api, autoTable, badge, button, card, clear, facts, fmtBytes, fmtRatio, guard, h, heading, inlineError,
  loading, p, statusBadge, table,
} from "../lib.js";

const KEYS_PAGE = 50;

/** The cache namespace a Cache resource declares (cache/model.py: prefixed outside namespace default). */
function cacheNamespace(resource) {
  const ns = resource.metadata.namespace;
  return ns === "default" ? resource.metadata.name : `${ns}.${resource.metadata.name}`;
}

function keyBrowser(ctx, name) {
  const out = h("div");
  const valueBox = h("div");
  const match = h("input", { type: "search", placeholder: "match, e.g. user:*", spellcheck: "false", size: "20" });
  let cursor = 0;
  const openKey = (key) => guard(async () => {
    clear(valueBox, loading());
    try {
      const v = await api("GET", p`/v1/cache/${name}/keys/${key}`);
      clear(valueBox, h("h4", {}, `Key ${v.key}`),
        facts([["type", v.type], ["ttl", v.ttlMs === null || v.ttlMs === undefined ? "no expiry" : `${(v.ttlMs / 1000).toFixed(1)} s`]]),
        v.type === "hash"
          ? table([{ label: "field", value: (f) => f[0] }, { label: "value", value: (f) => h("code", {}, f[1]) }], Object.entries(v.value || {}))
          : h("pre", { class: "json" }, v.value !== undefined ? v.value : `(binary, base64) ${v.valueBase64}`));
    } catch (err) {
      clear(valueBox, inlineError(err));  // a viewer token may list keys but not read values (403)
    }
  });
  const scan = (fresh) => guard(async () => {
    if (fresh) cursor = 0;
    clear(out, loading());
    const page = await api("GET", p`/v1/cache/${name}/keys`, { query: { match: match.value.trim(), cursor, count: KEYS_PAGE } });
    cursor = page.cursor;
    clear(out, table([{ label: "key", value: (k) => h("code", {}, k) }], (page.items || []).map((k) => k),
      { onSelect: (k) => openKey(k), empty: "No keys in this page of the scan." }),
    cursor ? button("Next page", () => scan(false)) : h("p", { class: "muted small" }, "End of the scan."));
  });
  const form = h("form", { class: "toolbar", onsubmit: (ev) => { ev.preventDefault(); scan(true); } }, match, h("button", { type: "submit" }, "Scan"));
  scan(true);
  return card("Keys", form, out, valueBox);
}

async function showEmbedded(ctx, name, pane) {
  clear(pane, loading());
  const [stats, hot] = await Promise.all([
    api("GET", p`/v1/cache/${name}/stats`),
    api("GET", p`/v1/cache/${name}/hotkeys`, { query: { limit: 10 } }),
  ]);
  if (!ctx.current) return;
  clear(pane,
    h("h3", {}, `Cache namespace ${name}`),
    facts([
      ["keys", stats.keys], ["memory", `${fmtBytes(stats.memoryBytes)}${stats.maxMemoryBytes ? ` of ${fmtBytes(stats.maxMemoryBytes)}` : " (no limit)"}`],
      ["eviction policy", stats.policy], ["hits / misses", `${stats.hits} / ${stats.misses}`], ["hit ratio", fmtRatio(stats.hitRatio)],
      ["evictions", stats.evictions], ["expired", stats.expired], ["operations", stats.ops],
      ["ops per second", stats.opsPerSecond !== null && stats.opsPerSecond !== undefined ? stats.opsPerSecond.toFixed(1) : ""], ["tags", stats.tags],
    ]),
    card(`Hot keys (1 in ${hot.sampleEvery} operations sampled, ${hot.sampledOps} seen)`, autoTable(hot.hot, { empty: "No hot keys sampled yet." })),
    card("Big keys (sampled)", table([
      { label: "key", value: (k) => h("code", {}, k.key) },
      { label: "type", value: (k) => k.type },
      { label: "size", value: (k) => fmtBytes(k.bytes), class: "num" },
    ], hot.big || [], { empty: "No keys sampled yet." })),
    keyBrowser(ctx, name));
}

async function showDeclared(ctx, resource, pane) {
  const name = cacheNamespace(resource);
  clear(pane, loading());
  let status;
  try {
    status = await api("GET", p`/v1/cache/${name}/nodes`);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;
    clear(pane, h("h3", {}, `Cache ${name}`), h("p", { class: "muted" }, "This node has not loaded this cache namespace (yet)."));
    return;
  }
  if (!ctx.current) return;
  if (status.backend === "embedded") {
    await showEmbedded(ctx, name, pane);
    return;
  }
  clear(pane,
    h("h3", {}, `Cache namespace ${name}`, " ", badge(status.backend, "info")),
    facts([["errors", status.errors], ["last error", status.lastError]]),
    card("Nodes", table([
      { label: "node", value: (n) => h("strong", {}, n.name) },
      { label: "state", value: (n) => statusBadge(n.state) },
      { label: "role / weight", value: (n) => n.role ?? n.weight ?? "" },
      { label: "failures", value: (n) => n.failures ?? "", class: "num" },
      { label: "last error", value: (n) => n.lastError ?? n.error ?? "" },
    ], status.nodes || [], { empty: "No nodes." })),
    card("Last rebalance", status.rebalance ? facts(Object.entries(status.rebalance)) : h("p", { class: "muted" }, "None since this node started.")));
}

export default {
  id: "cache",
  title: "Cache",
  async render(ctx) {
    const list = h("div", { class: "list-pane" }, loading());
    const detail = h("div", { class: "detail-pane" }, h("p", { class: "muted" }, "Pick a cache namespace."));
    clear(ctx.root, heading("Cache", () => this.render(ctx)), h("div", { class: "two" }, list, detail));
    const [spaces, declared] = await Promise.all([
      api("GET", "/v1/cache"),
      api("GET", "/v1/resources/caches"),
    ]);
    if (!ctx.current) return;
    let selected = ctx.params.get("ns");
    const mark = (tr) => { if (tr) for (const row of tr.closest("section, .list-pane").querySelectorAll("tr")) row.classList.toggle("selected", row === tr); };
    const openEmbedded = (s, tr) => { selected = s.namespace; ctx.setParams({ ns: selected }); mark(tr); return guard(() => showEmbedded(ctx, s.namespace, detail)); };
    const openDeclared = (r, tr) => { selected = cacheNamespace(r); ctx.setParams({ ns: selected }); mark(tr); return guard(() => showDeclared(ctx, r, detail)); };
    const resources = declared.items || [];
    clear(list,
      card("Embedded namespaces (this node)", table([
        { label: "namespace", value: (s) => h("strong", {}, s.namespace) },
        { label: "keys", value: (s) => s.keys, class: "num" },
        { label: "memory", value: (s) => fmtBytes(s.memoryBytes), class: "num" },
        { label: "hit ratio", value: (s) => fmtRatio(s.hitRatio), class: "num" },
        { label: "ops/s", value: (s) => (s.opsPerSecond ?? 0).toFixed(1), class: "num" },
        { label: "evictions", value: (s) => s.evictions, class: "num" },
      ], spaces.items || [], { onSelect: openEmbedded, isSelected: (s) => s.namespace === selected, empty: "No embedded cache namespace holds keys yet." })),
      card("Declared caches (Cache resources)", table([
        { label: "cache namespace", value: (r) => h("strong", {}, cacheNamespace(r)) },
        { label: "backend", value: (r) => r.spec.backend || "embedded" },
        { label: "resource", value: (r) => `${r.metadata.namespace}/${r.metadata.name}` },
      ], resources, { onSelect: openDeclared, isSelected: (r) => cacheNamespace(r) === selected, empty: "No Cache resources; the embedded default needs none." })));
    if (!selected) return;
    const embedded = (spaces.items || []).find((s) => s.namespace === selected);
    const resource = resources.find((r) => cacheNamespace(r) === selected);
    if (resource) await showDeclared(ctx, resource, detail);
    else if (embedded) await showEmbedded(ctx, selected, detail);
  },
};
