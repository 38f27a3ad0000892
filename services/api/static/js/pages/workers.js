// Workers: who can run what, whether they are alive, and what each is running now.
import { all, api } from "../api.js";
import { ago, badge, debouncer, emptyState, fill, h, loading, pageHead, shortId, transportName } from "../dom.js";
import { subscribe } from "../live.js";

const GIB = 1024 ** 3;

// "cuda · NVIDIA H200 · 139 GiB" and the host's memory; "–" for a worker that did not say.
function device(resources) {
  if (!resources) return h("span", { class: "muted" }, "–");
  const parts = [resources.device];
  if (resources.device_name) parts.push(resources.device_name);
  if (resources.device_memory_bytes) parts.push(`${(resources.device_memory_bytes / GIB).toFixed(0)} GiB`);
  const host = resources.host_memory_bytes
    ? h("span", { class: "sub" }, `host ${(resources.host_memory_bytes / GIB).toFixed(0)} GiB`)
    : null;
  return [h("span", {}, parts.join(" · ")), host];
}

export async function workersPage(ctx) {
  const list = h("div", { "aria-live": "polite" }, loading("Loading workers…"));
  fill(ctx.view,
    pageHead("Workers", { sub: "Processes that claim and run tasks: in-process, on the database, or over NATS." }),
    list,
  );

  async function load() {
    const [workers, running] = await Promise.all([
      api("/api/workers").then((r) => r.items),
      all("/api/tasks?state=running"),
    ]);
    if (!ctx.alive()) return;
    if (!workers.length) {
      fill(list, emptyState("No worker has registered yet.",
        h("p", {}, "Start one with ", h("code", {}, "flowyard worker --db …"), " or ",
          h("code", {}, "flowyard worker --nats …"), ", or run ", h("code", {}, "flowyard serve --workers 2"), ".")));
      return;
    }
    const byWorker = new Map();
    for (const task of running) {
      if (!byWorker.has(task.worker_id)) byWorker.set(task.worker_id, []);
      byWorker.get(task.worker_id).push(task);
    }
    workers.sort((a, b) => Number(b.online) - Number(a.online) || a.name.localeCompare(b.name));
    const rows = workers.map((w) => {
      const tasks = byWorker.get(w.id) || [];
      return h("tr", { dataset: { worker: w.name } },
        h("td", { class: "lead" }, h("strong", {}, w.name), h("span", { class: "sub mono" }, w.id)),
        h("td", { "data-label": "Status" }, badge(w.online ? "online" : "offline", w.online ? "online" : "offline")),
        h("td", { "data-label": "Host" }, w.host),
        h("td", { "data-label": "Transport" }, transportName(w.transport)),
        h("td", { "data-label": "Owner" }, w.owner || h("span", { class: "muted" }, "every user")),
        h("td", { "data-label": "Flows" }, w.flows.map((f) => h("span", { class: "chip" }, f))),
        h("td", { "data-label": "Device" }, device(w.resources)),
        h("td", { "data-label": "Busy", class: "nowrap" }, `${tasks.length} of ${w.concurrency}`),
        h("td", { "data-label": "Last seen", class: "nowrap" }, h("span", { title: w.last_seen_at }, ago(w.last_seen_at))),
        h("td", { "data-label": "Running" }, tasks.length
          ? h("ul", { class: "plain" }, tasks.map((t) => h("li", {}, h("a", { href: `/tasks/${t.id}` }, `${t.flow} ${shortId(t.id)}`), ` ${Math.round(t.progress * 100)} %`)))
          : h("span", { class: "muted" }, "idle")),
      );
    });
    fill(list, h("div", { class: "table-wrap" }, h("table", { class: "cards workers" },
      h("thead", {}, h("tr", {}, ["Worker", "Status", "Host", "Transport", "Owner", "Flows", "Device", "Busy", "Last seen", "Running"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows))));
  }

  const reload = debouncer(400, () => load().catch(() => {}));
  const unsubscribe = subscribe((event) => {
    if (event.type === "task.claimed" || event.type === "task.done" || event.type === "task.requeued") reload("all");
  }, () => reload("all"));
  const timer = setInterval(() => reload("all"), 5000);
  await load();
  return () => {
    unsubscribe();
    clearInterval(timer);
  };
}
