// Registry: services of a namespace with healthy/critical counts, and each service's instances.
import { api, badge, cell, clear, facts, fmtTime, guard, h, heading, jsonView, loading, p, statusBadge, table } from "../lib.js";

async function showService(ctx, name, pane) {
  clear(pane, loading());
  const data = await api("GET", p`/v1/registry/services/${name}/instances`, { query: { namespace: ctx.namespace } });
  if (!ctx.current) return;
  const box = h("div");
  const instances = data.instances || [];
  clear(pane,
    h("h3", {}, `Service ${name}`, " ", h("span", { class: "muted small" }, `index ${data.index}`)),
    table([
      { label: "id", value: (i) => h("strong", {}, i.id) },
      { label: "address", value: (i) => `${i.host}:${i.port}` },
      { label: "status", value: (i) => statusBadge(i.status) },
      { label: "zone", value: (i) => i.zone || "" },
      { label: "weight", value: (i) => i.weight, class: "num" },
      { label: "version", value: (i) => i.version || "" },
      { label: "tags", value: (i) => (i.tags || []).map((t) => badge(t)) },
      { label: "ttl", value: (i) => i.ttl || "" },
      { label: "expires", value: (i) => fmtTime(i.expiresAt) },
    ], instances, {
      empty: "No instances.",
      onSelect: (i, tr) => {
        for (const row of tr.parentElement.children) row.classList.toggle("selected", row === tr);
        clear(box, h("h4", {}, `Instance ${i.id}`),
          facts([
            ["status since", fmtTime(i.statusSince)], ["check output", i.output],
            ["registered", `${fmtTime(i.registeredAt)} by ${i.registeredBy || "?"}`],
            ["metadata", Object.keys(i.metadata || {}).length ? cell(i.metadata) : ""],
          ]),
          i.check ? [h("h4", {}, "Health check"), jsonView(i.check)] : null);
      },
    }),
    box);
}

export default {
  id: "registry",
  title: "Registry",
  async render(ctx) {
    const list = h("div", { class: "list-pane" }, loading());
    const detail = h("div", { class: "detail-pane" }, h("p", { class: "muted" }, "Pick a service."));
    clear(ctx.root, heading(`Registry · namespace ${ctx.namespace}`, () => this.render(ctx)), h("div", { class: "two" }, list, detail));
    const data = await api("GET", "/v1/registry/services", { query: { namespace: ctx.namespace } });
    if (!ctx.current) return;
    let selected = ctx.params.get("service");
    const items = data.items || [];
    const open = (s, tr) => {
      selected = s.name;
      ctx.setParams({ service: s.name });
      if (tr) for (const row of tr.parentElement.children) row.classList.toggle("selected", row === tr);
      return guard(() => showService(ctx, s.name, detail));
    };
    clear(list, table([
      { label: "service", value: (s) => h("strong", {}, s.name) },
      { label: "instances", value: (s) => s.instances, class: "num" },
      { label: "passing", value: (s) => (s.passing ? badge(String(s.passing), "good") : "0"), class: "num" },
      { label: "critical", value: (s) => (s.critical ? badge(String(s.critical), "bad") : "0"), class: "num" },
    ], items, { onSelect: open, isSelected: (s) => s.name === selected, empty: `No services registered in namespace ${ctx.namespace}.` }));
    const found = items.find((s) => s.name === selected);
    if (found) await open(found);
  },
};
