// Config: apps, their env/cluster/namespace triples, the draft items (secrets masked), releases and gray.
import {
  ApiError, api, badge, card, cell, clear, facts, fmtTime, guard, h, heading, inlineError, loading, p, table,
} from "../lib.js";

function nsKey(n) { return `${n.env}/${n.cluster}/${n.namespace}`; }

function pendingFacts(pending) {
  const parts = ["added", "changed", "removed"].map((k) => [k, (pending && pending[k]) || []]).filter(([, v]) => v.length);
  return parts.length ? h("span", {}, parts.map(([k, v]) => badge(`${k}: ${v.join(", ")}`, "warn"))) : "none";
}

async function grayCard(app, ns) {
  try {
    const gray = await api("GET", p`/v1/config/apps/${app}/envs/${ns.env}/clusters/${ns.cluster}/namespaces/${ns.namespace}/gray`);
    const items = Object.entries(gray.items || {}).map(([key, v]) => ({ key, ...v }));
    const published = gray.release ? Object.entries(gray.release.overrides || {}).map(([key, value]) => ({ key, value })) : [];
    return card("Gray release",
      facts([
        ["started", `${fmtTime(gray.created_at)} by ${gray.created_by || "?"}`],
        ["published", gray.release ? `gray release ${gray.release.id} by ${gray.release.author} at ${fmtTime(gray.release.at)}` : "not yet"],
        ["rules", gray.rules && gray.rules.length ? gray.rules : "none: no client gets the gray keys"],
      ]),
      h("h4", {}, "Gray keys being edited"),
      table([
        { label: "key", value: (i) => i.key },
        { label: "value", value: (i) => h("code", { class: "clip" }, cell(i.value)) },
        { label: "by", value: (i) => i.by },
      ], items, { empty: "No gray keys." }),
      published.length ? [h("h4", {}, "Published gray overrides"), table([
        { label: "key", value: (i) => i.key },
        { label: "value", value: (i) => h("code", { class: "clip" }, cell(i.value)) },
      ], published)] : null);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    return card("Gray release", inlineError(err));
  }
}

async function showNamespace(ctx, app, ns, pane) {
  clear(pane, loading());
  const [meta, draft, releases] = await Promise.all([
    api("GET", p`/v1/config/apps/${app}/envs/${ns.env}/clusters/${ns.cluster}/namespaces/${ns.namespace}`),
    api("GET", p`/v1/config/apps/${app}/envs/${ns.env}/clusters/${ns.cluster}/namespaces/${ns.namespace}/items`),
    api("GET", p`/v1/config/apps/${app}/envs/${ns.env}/clusters/${ns.cluster}/namespaces/${ns.namespace}/releases`, { query: { limit: 50 } }),
  ]);
  const gray = ns.gray ? await grayCard(app, ns) : null;
  if (!ctx.current) return;
  const items = Object.entries(draft.items || {}).map(([key, v]) => ({ key, ...v })).sort((a, b) => a.key.localeCompare(b.key));
  const releaseBox = h("div");
  const openRelease = (r) => guard(async () => {
    clear(releaseBox, loading());
    const full = await api("GET", p`/v1/config/apps/${app}/envs/${ns.env}/clusters/${ns.cluster}/namespaces/${ns.namespace}/releases/${r.id}`);
    const values = Object.entries(full.configurations || {}).map(([key, value]) => ({ key, value }));
    clear(releaseBox, h("h4", {}, `Release ${full.id}: ${full.title || ""}`),
      facts([["author", full.author], ["at", fmtTime(full.at)], ["kind", full.kind], ["message", full.message]]),
      table([
        { label: "key", value: (i) => i.key },
        { label: "value", value: (i) => h("code", { class: "clip" }, cell(i.value)) },
      ], values, { empty: "This release is empty." }));
  });
  const perms = meta.permissions || {};
  clear(pane,
    h("h3", {}, `${app} · ${nsKey(ns)}`),
    facts([
      ["format", meta.format], ["public", String(meta.public)], ["comment", meta.comment],
      ["latest release", meta.release ?? "never published"], ["unpublished changes", pendingFacts(meta.pending)],
      ["may edit", (perms.edit || []).join(", ") || "anyone with write"],
      ["may publish", (perms.publish || []).join(", ") || "anyone with write"],
      ["created", `${fmtTime(meta.createdAt)} by ${meta.createdBy}`],
      ["editing now", (draft.editors || []).join(", ")],
    ]),
    card("Draft items (what the next publish releases)", table([
      { label: "key", value: (i) => h("strong", {}, i.key) },
      { label: "value", value: (i) => (i.secret ? h("span", {}, h("code", {}, i.value), " ", badge("secret", "info")) : h("code", { class: "clip" }, i.value)) },
      { label: "comment", value: (i) => i.comment },
      { label: "by", value: (i) => i.by },
      { label: "at", value: (i) => fmtTime(i.at) },
    ], items, { empty: "The draft is empty." })),
    gray,
    card("Releases (newest first)", table([
      { label: "id", value: (r) => r.id, class: "num" },
      { label: "title", value: (r) => r.title },
      { label: "kind", value: (r) => r.kind },
      { label: "keys", value: (r) => r.keys, class: "num" },
      { label: "author", value: (r) => r.author },
      { label: "at", value: (r) => fmtTime(r.at) },
    ], releases.items || [], { onSelect: openRelease, empty: "Never published." }), releaseBox));
}

export default {
  id: "config",
  title: "Config",
  async render(ctx) {
    const appsPane = h("aside", { class: "side" }, loading());
    const nsPane = h("div", { class: "list-pane" }, h("p", { class: "muted" }, "Pick an app."));
    const detail = h("div", { class: "detail-pane" });
    clear(ctx.root, heading("Config center", () => this.render(ctx)),
      h("p", { class: "muted" }, "Secrets show masked, as the API returns them. Edit and publish with the CLI or API."),
      h("div", { class: "three" }, appsPane, nsPane, detail));
    const apps = (await api("GET", "/v1/config/apps")).items || [];
    if (!ctx.current) return;
    let app = ctx.params.get("app");
    const drawApps = () => clear(appsPane, apps.length ? h("ul", { class: "side-list" }, apps.map((a) => h("li", {},
      h("a", { href: "#", class: a.app === app ? "active" : undefined, onclick: (ev) => { ev.preventDefault(); guard(() => pickApp(a.app)); } },
        a.app, " ", h("span", { class: "muted small" }, a.tenant))))) : h("p", { class: "empty" }, "No apps have configuration yet."));
    const pickApp = async (name, wanted) => {
      app = name;
      drawApps();
      ctx.setParams({ app: name, ns: wanted });
      clear(detail);
      clear(nsPane, loading());
      const namespaces = (await api("GET", p`/v1/config/apps/${name}/namespaces`)).items || [];
      if (!ctx.current || app !== name) return;
      let selected = wanted;
      const pick = (n, tr) => {
        selected = nsKey(n);
        ctx.setParams({ app: name, ns: selected });
        if (tr) for (const row of tr.parentElement.children) row.classList.toggle("selected", row === tr);
        return guard(() => showNamespace(ctx, name, n, detail));
      };
      clear(nsPane, h("h3", {}, name), table([
        { label: "env", value: (n) => n.env },
        { label: "cluster", value: (n) => n.cluster },
        { label: "namespace", value: (n) => h("strong", {}, n.namespace) },
        { label: "format", value: (n) => n.format },
        { label: "release", value: (n) => n.release ?? "–", class: "num" },
        { label: "", value: (n) => [n.gray ? badge("gray", "warn") : null, n.public ? badge("public", "info") : null, n.inherits ? badge(`inherits ${n.inherits}`) : null] },
      ], namespaces, { onSelect: pick, isSelected: (n) => nsKey(n) === selected, empty: "No namespaces." }));
      const found = namespaces.find((n) => nsKey(n) === wanted);
      if (found) await pick(found);
    };
    drawApps();
    if (app && apps.some((a) => a.app === app)) await pickApp(app, ctx.params.get("ns"));
  },
};
