// The app: who is signed in, the header, and a router that maps the path to a page.
// Pages are modules with one function `(ctx) => cleanup?`; they render into ctx.view.
import { api, leave, session, setCsrf, signInUrl } from "./api.js";
import { $, h, loading, toast, fill } from "./dom.js";
import { flowPage, flowsPage } from "./pages/flows.js";
import { queuePage } from "./pages/queue.js";
import { taskPage } from "./pages/task.js";
import { usersPage } from "./pages/users.js";
import { webhooksPage } from "./pages/webhooks.js";
import { workersPage } from "./pages/workers.js";

const ROUTES = [
  { path: /^\/(?:tasks\/?)?$/, page: queuePage, section: "tasks", title: "Tasks" },
  { path: /^\/tasks\/([0-9a-fA-F-]{36})\/?$/, page: taskPage, section: "tasks", title: "Task" },
  { path: /^\/flows\/?$/, page: flowsPage, section: "flows", title: "Flows" },
  { path: /^\/flows\/([^/]+)\/?$/, page: flowPage, section: "flows", title: "Run a flow" },
  { path: /^\/workers\/?$/, page: workersPage, section: "workers", title: "Workers" },
  { path: /^\/webhooks\/?$/, page: webhooksPage, section: "webhooks", title: "Webhooks" },
  { path: /^\/users\/?$/, page: usersPage, section: "users", title: "Users" },
];

let cleanup = null;
let generation = 0;

export function navigate(to, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  render({ focus: true });
}

async function render({ focus = false } = {}) {
  generation += 1;
  const mine = generation;
  if (cleanup) {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
  }
  cleanup = null;
  const main = $("#main");
  const route = ROUTES.find((r) => r.path.test(location.pathname));
  for (const link of document.querySelectorAll(".top nav a")) {
    if (route && link.dataset.section === route.section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const view = h("div", { class: "view" }, loading());
  fill(main, view);
  if (!route) {
    document.title = "Not found · flowyard";
    fill(view,
      h("h1", {}, "Page not found"),
      h("p", {}, "Nothing lives at ", h("code", {}, location.pathname), ". ", h("a", { href: "/" }, "See all tasks"), "."),
    );
    return;
  }
  document.title = `${route.title} · flowyard`;
  const params = route.path.exec(location.pathname).slice(1).map(decodeURIComponent);
  const ctx = {
    view,
    params,
    query: new URLSearchParams(location.search),
    navigate,
    alive: () => mine === generation,
    setTitle: (title) => {
      if (mine === generation) document.title = `${title} · flowyard`;
    },
  };
  try {
    const done = await route.page(ctx);
    if (mine === generation) cleanup = typeof done === "function" ? done : null;
    else if (typeof done === "function") done();
  } catch (err) {
    if (mine !== generation || err?.status === 401) return;
    console.error(err);
    fill(view, h("h1", {}, "Something went wrong"), h("p", { class: "failure" }, String(err.message || err)));
  }
  if (focus && mine === generation) (view.querySelector("h1") || main).focus({ preventScroll: false });
}

function internalLink(event) {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest("a[href]");
  if (!link || link.target || link.hasAttribute("download")) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin) return;
  if (/^\/(api|docs|redoc|static|openapi\.json|login)(\/|$)/.test(url.pathname)) return;
  event.preventDefault();
  if (url.pathname + url.search !== location.pathname + location.search) navigate(url.pathname + url.search);
}

function renderWho() {
  const who = $("#who");
  const me = session.me;
  $("#nav-users").hidden = !session.managesUsers;
  if (!me.auth_required) {
    fill(who, h("span", { class: "small", title: "default mode on this machine: no sign-in" }, "local mode"));
    return;
  }
  const signOut = h("button", { type: "button", class: "small" }, "Sign out");
  signOut.addEventListener("click", async () => {
    try {
      await api("/api/logout", { method: "POST" });
    } catch (err) {
      toast(`Could not sign out: ${err.message}`, { error: true });
      return;
    }
    leave("/login");
  });
  fill(who,
    h("span", {}, "Signed in as ", h("strong", { id: "me-name" }, me.name), ` (${me.role})`),
    signOut,
  );
}

async function boot() {
  try {
    session.me = await api("/api/me");
  } catch (err) {
    if (err.status === 401) return; // on its way to the sign-in page
    $("#main").replaceChildren(h("p", { class: "failure" }, `Could not load: ${err.message}`));
    return;
  }
  if (session.me.auth_required && !session.me.csrf_token) {
    // signed in some other way than the session cookie (e.g. Basic): sign in for a session
    location.assign(signInUrl());
    return;
  }
  setCsrf(session.me.csrf_token);
  renderWho();
  document.addEventListener("click", internalLink);
  window.addEventListener("popstate", () => render({ focus: true }));
  render();
}

boot();
