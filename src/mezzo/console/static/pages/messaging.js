// Messaging: topics of a namespace with size and groups, group lag, subscriptions, dead letters, messages.
import {
  api, badge, button, card, cell, clear, facts, fmtBytes, fmtTime, guard, h, heading, jsonView, loading, p,
  showNotice, table,
} from "../lib.js";

const PAGE_SIZE = 20;

function deadLetterTopics(subscriptions) {
  const out = new Map();  // dead-letter topic -> the subscriptions that send there
  for (const s of subscriptions) {
    const target = s.spec.deadLetterTopic || `${s.spec.topic}.${s.spec.group}.dlq`;
    out.set(target, [...(out.get(target) || []), s.metadata.name]);
  }
  return out;
}

function groupsCard(groups) {
  const rows = [];
  for (const g of groups) {
    for (const [partition, st] of Object.entries(g.partitions || {})) rows.push({ group: g.group, partition, ...st, total: g });
  }
  return card("Consumer groups",
    table([
      { label: "group", value: (g) => h("strong", {}, g.group) },
      { label: "lag", value: (g) => g.lag, class: "num" },
      { label: "in flight", value: (g) => g.inFlight, class: "num" },
    ], groups, { empty: "No consumer groups yet." }),
    rows.length ? h("details", {}, h("summary", {}, "Per partition"), table([
      { label: "group", value: (r) => r.group },
      { label: "partition", value: (r) => r.partition, class: "num" },
      { label: "committed", value: (r) => r.committed, class: "num" },
      { label: "next", value: (r) => r.next, class: "num" },
      { label: "lag", value: (r) => r.lag, class: "num" },
      { label: "in flight", value: (r) => r.inFlight, class: "num" },
    ], rows)) : null);
}

function messagesCard(ctx, topic) {
  const state = { partition: 0, offset: 0 };
  const out = h("div");
  const detail = h("div");
  const partition = h("select", {}, Array.from({ length: topic.partitions }, (_, i) => h("option", { value: String(i) }, `partition ${i}`)));
  const offset = h("input", { type: "number", min: "0", value: "0", size: "8", "aria-label": "offset" });
  const load = () => guard(async () => {
    state.partition = Number(partition.value);
    state.offset = Math.max(0, Number(offset.value) || 0);
    clear(out, loading());
    const data = await api("GET", p`/v1/topics/${topic.name}/messages`,
      { query: { namespace: ctx.namespace, partition: state.partition, offset: state.offset, limit: PAGE_SIZE } });
    const messages = data.messages || [];
    clear(out, table([
      { label: "offset", value: (m) => m.offset, class: "num" },
      { label: "published", value: (m) => fmtTime(m.publishedAt) },
      { label: "key", value: (m) => m.key || "" },
      { label: "tags", value: (m) => cell(m.tags) },
      { label: "data", value: (m) => h("code", { class: "clip" }, typeof m.data === "string" ? m.data : JSON.stringify(m.data ?? m.dataBase64 ?? "")) },
    ], messages, { onSelect: (m) => clear(detail, h("h4", {}, `Message ${m.id}`), jsonView(m)), empty: "No messages from this offset." }),
    messages.length === PAGE_SIZE ? button("Next page", () => { offset.value = String(messages[messages.length - 1].offset + 1); load(); }) : null);
  });
  return card("Messages (read without a group)",
    h("div", { class: "toolbar" }, partition, h("label", {}, "from offset ", offset), button("Read", load, "primary")),
    out, detail);
}

async function showTopic(ctx, topic, dlq, subscriptions, pane, reload) {
  clear(pane, loading());
  const query = { namespace: ctx.namespace };
  const [groups, pending] = await Promise.all([
    api("GET", p`/v1/topics/${topic.name}/groups`, { query }),
    api("GET", p`/v1/topics/${topic.name}/transactions`, { query }),
  ]);
  if (!ctx.current) return;
  const subs = subscriptions.filter((s) => s.spec.topic === topic.name);
  const replay = dlq.has(topic.name) ? button("Replay dead letters…", () => guard(async () => {
    if (!window.confirm(`Publish the dead letters in ${topic.name} back to the topics they came from?`)) return;
    const result = await api("POST", p`/v1/topics/${topic.name}:replay`, { query });
    showNotice(`Replayed ${result.replayed} message(s) from ${topic.name}.`);
    reload();
  }), "primary") : null;
  clear(pane,
    h("div", { class: "detail-head" }, h("h3", {}, `Topic ${topic.name}`), replay),
    facts([
      ["partitions", topic.partitions], ["messages", topic.messages], ["size", fmtBytes(topic.bytes)],
      ["dead letters of", dlq.has(topic.name) ? dlq.get(topic.name).join(", ") : ""],
    ]),
    groupsCard(groups.items || []),
    card("Subscriptions (push)", table([
      { label: "name", value: (s) => s.metadata.name },
      { label: "group", value: (s) => s.spec.group },
      { label: "endpoint", value: (s) => s.spec.endpoint },
      { label: "dead letters to", value: (s) => s.spec.deadLetterTopic || `${s.spec.topic}.${s.spec.group}.dlq` },
      { label: "max deliveries", value: (s) => s.spec.maxDeliveries ?? "16", class: "num" },
    ], subs, { empty: "No push subscriptions on this topic." })),
    card("Prepared (half) messages not yet resolved", table([
      { label: "transaction", value: (t) => t.transaction },
      { label: "messages", value: (t) => t.messages, class: "num" },
      { label: "check-backs", value: (t) => t.checks, class: "num" },
      { label: "prepared", value: (t) => fmtTime(t.createdMs) },
    ], pending.items || [], { empty: "None." })),
    messagesCard(ctx, topic));
}

export default {
  id: "messaging",
  title: "Messaging",
  async render(ctx) {
    const list = h("div", { class: "list-pane" }, loading());
    const detail = h("div", { class: "detail-pane" }, h("p", { class: "muted" }, "Pick a topic."));
    clear(ctx.root, heading(`Messaging · namespace ${ctx.namespace}`, () => this.render(ctx)), h("div", { class: "two" }, list, detail));
    const query = { namespace: ctx.namespace };
    const [topics, subscriptions] = await Promise.all([
      api("GET", "/v1/topics", { query }),
      api("GET", "/v1/resources/subscriptions", { query }),
    ]);
    if (!ctx.current) return;
    const subs = subscriptions.items || [];
    const dlq = deadLetterTopics(subs);
    const items = topics.items || [];
    let selected = ctx.params.get("topic");
    const draw = () => clear(list, table([
      { label: "topic", value: (t) => h("span", {}, h("strong", {}, t.name), dlq.has(t.name) ? [" ", badge("dead letters", "warn")] : null) },
      { label: "partitions", value: (t) => t.partitions, class: "num" },
      { label: "messages", value: (t) => t.messages, class: "num" },
      { label: "size", value: (t) => fmtBytes(t.bytes), class: "num" },
      { label: "groups", value: (t) => t.groups.join(", ") },
    ], items, { onSelect: (t) => open(t), isSelected: (t) => t.name === selected, empty: `No topics in namespace ${ctx.namespace}.` }));
    const open = (t) => guard(async () => {
      selected = t.name;
      ctx.setParams({ topic: t.name });
      draw();
      await showTopic(ctx, t, dlq, subs, detail, () => this.render(ctx));
    });
    draw();
    const found = items.find((t) => t.name === selected);
    if (found) await open(found);
  },
};
