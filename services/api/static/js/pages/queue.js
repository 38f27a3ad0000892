// The queue: every task the caller may see, newest first, filtered and paginated
// through the URL (?state=&flow=&owner=&page=), kept live by the event stream.
import { taskActions } from "../actions.js";
import { api, session } from "../api.js";
import {
  ago, badge, debouncer, duration, emptyState, finished, h, loading, pageHead, progressBar, shortId, shownState, fill,
} from "../dom.js";
import { subscribe } from "../live.js";

const PAGE_SIZE = 20;
const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];

/** "Ran 3 s", "running 12 s", "waited 4 s" — how long the task took or has taken so far. */
export function taskDuration(task, now = Date.now()) {
  if (task.claimed_at && task.finished_at) return `ran ${duration(Date.parse(task.finished_at) - Date.parse(task.claimed_at))}`;
  if (task.state === "running" && task.claimed_at) return `running ${duration(now - Date.parse(task.claimed_at))}`;
  if (task.state === "queued") return `waiting ${duration(now - Date.parse(task.created_at))}`;
  return "";
}

export async function queuePage(ctx) {
  const { view, query } = ctx;
  const filters = {
    state: query.get("state") || "",
    flow: query.get("flow") || "",
    owner: query.get("owner") || "",
  };
  const page = Math.max(1, Number.parseInt(query.get("page") || "1", 10) || 1);
  const rows = new Map();
  const tbody = h("tbody");
  const list = h("div", { class: "list", "aria-live": "polite" }, loading("Loading tasks…"));
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });

  const href = (changes) => {
    const next = new URLSearchParams();
    const merged = { ...filters, page: String(page), ...changes };
    for (const [key, value] of Object.entries(merged)) {
      if (value && !(key === "page" && value === "1")) next.set(key, value);
    }
    const qs = next.toString();
    return `/${qs ? `?${qs}` : ""}`;
  };

  const flows = await api("/api/flows").then((r) => r.items.map((f) => f.name)).catch(() => []);
  if (!ctx.alive()) return;

  const stateSelect = h("select", { name: "state", id: "filter-state" },
    h("option", { value: "" }, "Any state"),
    STATES.map((s) => h("option", { value: s, selected: s === filters.state }, s)),
  );
  const flowSelect = h("select", { name: "flow", id: "filter-flow" },
    h("option", { value: "" }, "Any flow"),
    flows.map((f) => h("option", { value: f, selected: f === filters.flow }, f)),
  );
  const ownerInput = session.managesUsers
    ? h("input", { name: "owner", id: "filter-owner", value: filters.owner, placeholder: "everyone", autocomplete: "off" })
    : null;
  const filterForm = h("form", { class: "filters", role: "search", "aria-label": "Filter tasks" },
    h("label", {}, "State", stateSelect),
    h("label", {}, "Flow", flowSelect),
    ownerInput ? h("label", {}, "Owner", ownerInput) : null,
    filters.state || filters.flow || filters.owner ? h("a", { href: "/", class: "button small" }, "Clear filters") : null,
  );
  const apply = () => ctx.navigate(href({
    state: stateSelect.value, flow: flowSelect.value, owner: ownerInput ? ownerInput.value.trim() : "", page: "1",
  }));
  stateSelect.addEventListener("change", apply);
  flowSelect.addEventListener("change", apply);
  filterForm.addEventListener("submit", (e) => {
    e.preventDefault();
    apply();
  });
  ownerInput?.addEventListener("change", apply);

  fill(view,
    pageHead("Tasks", {
      sub: "Every task you may see, newest first. Updates arrive live.",
      actions: h("a", { href: "/flows", class: "button primary" }, "Run a flow"),
    }),
    filterForm,
    list,
    pager,
  );

  const table = h("div", { class: "table-wrap" },
    h("table", { class: "cards tasks" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Task"),
        h("th", { scope: "col" }, "State"),
        h("th", { scope: "col" }, "Progress"),
        h("th", { scope: "col" }, "Attempt"),
        h("th", { scope: "col" }, "Worker"),
        h("th", { scope: "col" }, "Age"),
        h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")),
      )),
      tbody,
    ),
  );

  function row(task) {
    const state = shownState(task);
    const bar = progressBar(task);
    const tr = h("tr", { dataset: { id: task.id, state: task.state } },
      h("td", { class: "lead" },
        h("a", { href: `/tasks/${task.id}`, class: "task-link" }, task.flow),
        h("span", { class: "sub mono" }, shortId(task.id), session.managesUsers ? ` · ${task.owner}` : ""),
      ),
      h("td", { "data-label": "State" }, badge(state),
        task.priority ? h("span", { class: "sub" }, `priority ${task.priority}`) : null),
      h("td", { "data-label": "Progress", class: "progress-cell" }, bar,
        task.state === "failed" && task.error ? h("span", { class: "sub failure-text" }, task.error) : null),
      h("td", { "data-label": "Attempt", class: "nowrap" }, task.attempt ? `${task.attempt} of ${task.max_attempts}` : "–"),
      h("td", { "data-label": "Worker" }, task.worker_id ? h("span", { class: "mono small" }, task.worker_id) : h("span", { class: "muted" }, "–")),
      h("td", { "data-label": "Age", class: "nowrap" },
        h("span", { dataset: { ago: task.created_at } }, ago(task.created_at)),
        h("span", { class: "sub", dataset: { duration: "" } }, taskDuration(task)),
      ),
      h("td", { "data-label": "Actions" }, taskActions(task, {
        changed: update,
        deleted: () => remove(task.id),
      })),
    );
    tr.task = task;
    tr.bar = bar;
    return tr;
  }

  // A row is rebuilt when its task changes or the list reloads: what the user was
  // typing into it (a new priority) and where the focus was go over to the new row.
  function carryEdits(old, fresh) {
    for (const input of old.querySelectorAll("[data-focus] input")) {
      const key = input.closest("[data-focus]").dataset.focus;
      const target = fresh.querySelector(`[data-focus="${key}"] input`);
      if (target && input.value !== input.defaultValue) target.value = input.value;
    }
    const focusKey = old.contains(document.activeElement) ? document.activeElement.closest("[data-focus]")?.dataset.focus : null;
    return () => { if (focusKey) fresh.querySelector(`[data-focus="${focusKey}"] input`)?.focus(); };
  }

  function update(task) {
    const old = rows.get(task.id);
    const fresh = row(task);
    rows.set(task.id, fresh);
    if (old) {
      const refocus = carryEdits(old, fresh);
      old.replaceWith(fresh);
      refocus();
    }
  }

  function remove(id) {
    rows.get(id)?.remove();
    rows.delete(id);
    if (!rows.size) load();
  }

  async function load() {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String((page - 1) * PAGE_SIZE) });
    for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
    const result = await api(`/api/tasks?${params}`);
    if (!ctx.alive()) return;
    const before = new Map(rows);
    const refocus = [];
    rows.clear();
    fill(tbody, ...result.items.map((task) => {
      const tr = row(task);
      const old = before.get(task.id);
      if (old) refocus.push(carryEdits(old, tr));
      rows.set(task.id, tr);
      return tr;
    }));
    for (const focus of refocus) focus();
    const filtered = filters.state || filters.flow || filters.owner;
    if (!result.items.length) {
      fill(list, page > 1
        ? emptyState("No more tasks.", h("a", { href: href({ page: "1" }) }, "Back to the newest"))
        : filtered
          ? emptyState("No tasks match these filters.", h("a", { href: "/" }, "Clear filters"))
          : emptyState("No tasks yet.", "Pick a flow to run: ", h("a", { href: "/flows" }, "see the flows"), "."));
    } else {
      fill(list, table);
    }
    fill(pager,
      page > 1 ? h("a", { href: href({ page: String(page - 1) }), class: "button small", rel: "prev" }, "← Newer") : h("span"),
      result.items.length ? h("span", { class: "muted small" }, `Page ${page}`) : h("span"),
      result.next_offset !== null ? h("a", { href: href({ page: String(page + 1) }), class: "button small", rel: "next" }, "Older →") : h("span"),
    );
  }

  const refreshTask = debouncer(150, async (id) => {
    if (!rows.has(id)) return;
    try {
      const task = await api(`/api/tasks/${id}`, { retry: false });
      if (ctx.alive() && rows.has(id)) update(task);
    } catch (err) {
      if (err.status === 404) remove(id);
    }
  });
  const reload = debouncer(300, () => load());

  function matches(event) {
    if (filters.flow && event.flow !== filters.flow) return false;
    if (filters.owner && event.owner !== filters.owner) return false;
    return !filters.state || filters.state === "queued";
  }

  const unsubscribe = subscribe((event) => {
    const tr = rows.get(event.task_id);
    if (event.type === "task.progress" && tr && tr.task.attempt === event.attempt) {
      tr.task = { ...tr.task, progress: event.progress, message: event.message };
      tr.bar.update(tr.task);
      return;
    }
    if (tr) refreshTask(event.task_id);
    else if (event.type === "task.created" && page === 1 && matches(event)) reload("list");
  }, () => reload("list"));

  const ticker = setInterval(() => {
    for (const tr of rows.values()) {
      tr.querySelector("[data-ago]").textContent = ago(tr.task.created_at);
      if (!finished(tr.task.state)) tr.querySelector("[data-duration]").textContent = taskDuration(tr.task);
    }
  }, 1000);

  await load();
  return () => {
    unsubscribe();
    clearInterval(ticker);
  };
}
