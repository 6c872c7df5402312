// Resources: the declarative kinds, their resources, one resource's spec and history; delete and roll back.
import {
  api, badge, button, cell, clear, dig, facts, fmtTime, guard, h, heading, jsonView, loading, p,
  rememberNamespaces, showNotice, table,
} from "../lib.js";

function kindList(kinds, selected, onPick) {
  return h("ul", { class: "side-list" }, kinds.map((k) => h("li", {},
    h("a", { href: "#", class: k.kind === selected ? "active" : undefined, title: k.description,
      onclick: (ev) => { ev.preventDefault(); onPick(k); } }, k.kind, " ", h("span", { class: "muted small" }, k.plural)))));
}

function resourceTable(kind, items, selected, onSelect) {
  const columns = [
    { label: "namespace", value: (r) => r.metadata.namespace },
    { label: "name", value: (r) => h("strong", {}, r.metadata.name) },
    ...(kind.columns || []).map((c) => ({ label: c.header.toLowerCase(), value: (r) => cell(dig(r.spec, c.path)) })),
    { label: "gen", value: (r) => r.metadata.generation, class: "num" },
    { label: "updated", value: (r) => fmtTime(r.metadata.updatedAt) },
    { label: "by", value: (r) => r.metadata.updatedBy },
  ];
  return table(columns, items, {
    onSelect,
    isSelected: (r) => selected && r.metadata.name === selected.name && r.metadata.namespace === selected.namespace,
    empty: `No ${kind.plural}. Create them with mezzo apply -f FILE.yaml.`,
  });
}

/** The live resource's facts, or a note that it is deleted (its history stays, and it can be rolled back). */
function current(res) {
  if (!res) return h("p", { class: "muted" }, "Deleted. Its history stays: pick a version below to roll back to it.");
  const md = res.metadata;
  return [
    facts([
      ["uid", md.uid], ["generation", md.generation], ["store revision", md.resourceVersion],
      ["created", `${fmtTime(md.createdAt)} by ${md.createdBy}`], ["updated", `${fmtTime(md.updatedAt)} by ${md.updatedBy}`],
      ["labels", Object.keys(md.labels || {}).length ? h("span", {}, Object.entries(md.labels).map(([k, v]) => badge(`${k}=${v}`))) : ""],
      ["annotations", Object.keys(md.annotations || {}).length ? md.annotations : ""],
    ]),
    h("h4", {}, "Spec"), jsonView(res.spec),
  ];
}

async function showResource(ctx, kind, ref, pane, reload) {
  clear(pane, loading());
  const query = { namespace: ref.namespace };
  const [found, history] = await Promise.all([
    api("GET", p`/v1/resources/${kind.plural}/${ref.name}`, { query, allow: [404] }),
    api("GET", p`/v1/resources/${kind.plural}/${ref.name}/history`, { query }),  // 404 only if it never existed
  ]);
  if (!ctx.current) return;
  const res = found && found.metadata ? found : null;
  const what = `${kind.kind} ${ref.namespace}/${ref.name}`;
  const versionBox = h("div");
  const remove = res ? button("Delete…", () => guard(async () => {
    if (!window.confirm(`Delete ${what}? Its history stays; it can be re-applied or rolled back.`)) return;
    const result = await api("DELETE", p`/v1/resources/${kind.plural}/${ref.name}`, { query });
    showNotice(`${result.kind} ${result.namespace}/${result.name} ${result.action} (generation ${result.generation}).`);
    reload();
  }), "danger") : null;
  const showVersion = (entry, tr) => {
    for (const row of tr.parentElement.children) row.classList.toggle("selected", row === tr);
    const live = res && entry.generation === res.metadata.generation;
    const rollback = live || entry.action === "deleted" ? null : button(`Roll back to generation ${entry.generation}…`, () => guard(async () => {
      if (!window.confirm(`Apply generation ${entry.generation} of ${what} again, as a new generation?`)) return;
      const result = await api("POST", p`/v1/resources/${kind.plural}/${ref.name}:rollback`, { query: { ...query, to: entry.generation } });
      showNotice(`${result.kind} ${result.namespace}/${result.name} ${result.action}: now generation ${result.generation}.`);
      reload();
    }));
    clear(versionBox, h("h4", {}, `Generation ${entry.generation} (${entry.action})`), facts([["labels", entry.labels]]),
      jsonView(entry.spec), rollback);
  };
  clear(pane,
    h("div", { class: "detail-head" }, h("h3", {}, what, res ? null : [" ", badge("deleted", "bad")]), remove),
    current(res),
    h("h4", {}, "History (newest first)"),
    table([
      { label: "gen", value: (e) => e.generation, class: "num" },
      { label: "action", value: (e) => e.action + (e.rolledBackTo ? ` → ${e.rolledBackTo}` : "") },
      { label: "when", value: (e) => fmtTime(e.at) },
      { label: "by", value: (e) => e.by },
      { label: "revision", value: (e) => e.revision, class: "num" },
    ], [...(history.items || [])].reverse(), { onSelect: showVersion, empty: "No history." }),
    versionBox);
}

export default {
  id: "resources",
  title: "Resources",
  async render(ctx) {
    const side = h("aside", { class: "side" }, loading());
    const list = h("div", { class: "list-pane" });
    const detail = h("div", { class: "detail-pane" }, h("p", { class: "muted" }, "Pick a resource to see its spec and history."));
    clear(ctx.root, heading("Resources", () => this.render(ctx)),
      h("p", { class: "muted" }, "Read here; change with mezzo apply / delete / rollback (or the buttons on a resource)."),
      h("div", { class: "three" }, side, list, detail));
    const kinds = (await api("GET", "/v1/kinds")).items || [];
    const wanted = ctx.params.get("kind");
    let kind = kinds.find((k) => k.kind === wanted) || kinds[0];
    const pick = async (k, ref) => {
      kind = k;
      clear(side, kindList(kinds, k.kind, (next) => guard(() => pick(next))));
      ctx.setParams({ kind: k.kind, namespace: ref && ref.namespace, name: ref && ref.name });
      clear(list, h("h3", {}, k.kind, " ", h("span", { class: "muted small" }, k.description || "")), loading());
      if (!ref) clear(detail, h("p", { class: "muted" }, "Pick a resource to see its spec and history."));
      const data = await api("GET", p`/v1/resources/${k.plural}`);
      if (!ctx.current || kind !== k) return;
      const items = data.items || [];
      rememberNamespaces(items.map((r) => r.metadata.namespace));
      const select = (r) => guard(() => pick(k, { namespace: r.metadata.namespace, name: r.metadata.name }));
      list.lastChild.replaceWith(resourceTable(k, items, ref, select));
      if (ref) await showResource(ctx, k, ref, detail, () => guard(() => pick(k, ref)));
    };
    if (!kind) { clear(side, h("p", { class: "muted" }, "This node knows no kinds.")); return; }
    const name = ctx.params.get("name");
    await pick(kind, name ? { namespace: ctx.params.get("namespace") || "default", name } : undefined);
  },
};
