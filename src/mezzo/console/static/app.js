// The console shell: login, navigation, the namespace picker, who you are, and the hash router.
import { ApiError, api, bannerInto, clear, guard, h, hideBanner, inlineError, onUnauthorized, session } from "./lib.js";
import overview from "./pages/overview.js";
import resources from "./pages/resources.js";
import messaging from "./pages/messaging.js";
import transactions from "./pages/transactions.js";
import config from "./pages/config.js";
import registry from "./pages/registry.js";
import cache from "./pages/cache.js";
import tracing from "./pages/tracing.js";

const PAGES = [overview, resources, messaging, transactions, config, registry, cache, tracing];
const NAMESPACE_KEY = "mezzo.console.namespace";

const $ = (id) => document.getElementById(id);

function showLogin(message) {
  session.token = null;
  $("shell").hidden = true;
  $("login").hidden = false;
  const box = $("login-error");
  box.hidden = !message;
  box.textContent = message || "";
  $("login-token").value = "";
  $("login-token").focus();
}

function loginMessage(err) {
  if (err instanceof ApiError) {
    const pr = err.problem || {};
    return `${err.status || ""} ${pr.title || "Error"}: ${pr.detail || err.message}`.trim();
  }
  return String(err);
}

async function signIn(token) {
  session.token = token;
  try {
    await api("GET", "/v1/kinds");  // any role may read it: a cheap check that the token works
  } catch (err) {
    showLogin(loginMessage(err));
    return;
  }
  $("login").hidden = true;
  $("shell").hidden = false;
  showWhoami();
  route();
}

/** The signed-in token's name, role and namespaces. */
async function showWhoami() {
  const box = $("whoami");
  box.textContent = "";
  try {
    const me = await api("GET", "/v1/whoami");
    const scope = me.namespaces.includes("*") ? "" : ` · ${me.namespaces.join(", ")}`;
    box.textContent = `${me.name} · ${me.role}${scope}`;
  } catch (err) {
    box.textContent = "";
  }
}

function currentNamespace() {
  return sessionStorage.getItem(NAMESPACE_KEY) || "default";
}

function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [name, query = ""] = raw.split("?");
  const page = PAGES.find((pg) => pg.id === name) || PAGES[0];
  return { page, params: new URLSearchParams(query) };
}

let renderCount = 0;

function route() {
  if ($("shell").hidden) return;
  const { page, params } = parseHash();
  hideBanner();
  for (const link of $("nav").querySelectorAll("a")) link.classList.toggle("active", link.dataset.page === page.id);
  document.title = `${page.title} · Mezzo console`;
  // each render gets its own container: a slow render of a page left behind writes into a detached node
  const root = h("div", { class: "page-body" });
  clear($("page"), root);
  const render = ++renderCount;
  const ctx = {
    root,
    params,
    namespace: currentNamespace(),
    get current() { return render === renderCount; },
    /** Record page state in the URL (without re-rendering), so reload and links return here. */
    setParams(values) {
      const next = new URLSearchParams();
      for (const [k, v] of Object.entries(values)) if (v !== undefined && v !== null && v !== "") next.set(k, String(v));
      const query = next.toString();
      window.history.replaceState(null, "", `#/${page.id}${query ? `?${query}` : ""}`);
    },
    go(pageId, values = {}) {
      const query = new URLSearchParams(values).toString();
      window.location.hash = `#/${pageId}${query ? `?${query}` : ""}`;
    },
  };
  guard(async () => {
    try {
      await page.render(ctx);
    } catch (err) {
      if (render === renderCount && !(err instanceof ApiError && err.status === 401)) root.append(inlineError(err));
      throw err;
    }
  });
}

function buildNav() {
  clear($("nav"), PAGES.map((pg) => h("a", { href: `#/${pg.id}`, "data-page": pg.id }, pg.title)));
}

function start() {
  bannerInto($("banner"));
  buildNav();
  onUnauthorized((err) => showLogin(loginMessage(err)));
  const ns = $("namespace");
  ns.value = currentNamespace();
  ns.addEventListener("change", () => {
    const value = ns.value.trim() || "default";
    ns.value = value;
    sessionStorage.setItem(NAMESPACE_KEY, value);
    route();
  });
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("login-token").value.trim();
    if (token) signIn(token);
  });
  $("logout").addEventListener("click", () => showLogin(""));
  window.addEventListener("hashchange", route);
  if (session.token) signIn(session.token);
  else showLogin("");
}

start();
