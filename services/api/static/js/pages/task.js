// One task: what it was asked to do, what it made, what went wrong, and every step.
import { taskActions } from "../actions.js";
import { api } from "../api.js";
import {
  ago, badge, clock, dateTime, debouncer, duration, emptyState, h, isImage, pageHead, percent, progressBar, shownState, size, fill,
} from "../dom.js";
import { subscribe } from "../live.js";

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function when(iso) {
  return iso ? h("span", { title: dateTime(iso) }, `${dateTime(iso)} (${ago(iso)})`) : h("span", { class: "muted" }, "–");
}

function between(from, to) {
  return from && to ? duration(Date.parse(to) - Date.parse(from)) : null;
}

function paramValue(value) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "not set");
  if (typeof value === "object") return h("code", {}, JSON.stringify(value));
  if (typeof value === "boolean") return value ? "yes" : "no";
  return h("code", {}, String(value));
}

function fileCard(file, { kind }) {
  const download = h("a", { href: file.url, download: file.name, class: "button small" }, "Download");
  if (isImage(file.media_type)) {
    return h("figure", {},
      h("a", { href: file.url, class: "view", target: "_blank", rel: "noopener", title: `Open ${file.name}` },
        h("img", { src: file.url, alt: `${kind} ${file.name}`, loading: "lazy" })),
      h("figcaption", {},
        h("span", {}, h("strong", {}, file.name), h("span", { class: "muted" }, ` · ${size(file.size)}`)),
        download),
    );
  }
  return null;
}

function fileRows(files) {
  return h("ul", { class: "files" }, files.map((file) => h("li", {},
    h("span", {}, h("strong", {}, file.name), h("span", { class: "muted" }, ` · ${size(file.size)} · ${file.media_type}`)),
    h("a", { href: file.url, download: file.name, class: "button small" }, "Download"),
  )));
}

function gallery(files, kind) {
  const images = files.map((f) => fileCard(f, { kind })).filter(Boolean);
  const others = files.filter((f) => !isImage(f.media_type));
  return [
    images.length ? h("div", { class: "gallery" }, images) : null,
    others.length ? fileRows(others) : null,
  ];
}

/** Events as a person reads them: consecutive progress reports of an attempt become one step. */
export function timelineSteps(events) {
  const steps = [];
  for (const event of events) {
    const last = steps[steps.length - 1];
    if (event.type === "task.progress" && last?.type === "task.progress" && last.attempt === event.attempt) {
      last.until = event;
      last.count += 1;
      continue;
    }
    steps.push({ ...event, type: event.type, attempt: event.attempt, first: event, until: event, count: 1 });
  }
  return steps;
}

function describe(step) {
  const e = step.first;
  switch (e.type) {
    case "task.created":
      return ["Created", `by ${e.owner}, priority ${e.priority}${e.inputs?.length ? `, ${e.inputs.length} input file(s)` : ""}`, "created"];
    case "task.claimed":
      return [`Claimed for attempt ${e.attempt}`, `by worker ${e.worker_id}`, "claimed"];
    case "task.progress": {
      const end = step.until;
      const range = step.count > 1 ? `${percent(e.progress)} → ${percent(end.progress)}` : percent(e.progress);
      const reports = step.count > 1 ? ` (${step.count} reports)` : "";
      return [`Progress ${range}`, `${end.message || ""}${reports}`, "progress"];
    }
    case "task.cancel_requested":
      return ["Cancel requested", "the worker stops the flow at its next check", "cancelled"];
    case "task.requeued":
      return [`Requeued after attempt ${e.attempt}`, e.reason, "requeued"];
    case "task.retried":
      return ["Retried", `next attempt ${e.next_attempt} of ${e.max_attempts}`, "requeued"];
    case "task.reprioritized":
      return [`Priority set to ${e.priority}`, "", "created"];
    case "task.done": {
      const what = { succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" }[e.status] || e.status;
      const outputs = e.outputs?.length ? `${e.outputs.length} output file(s)` : "";
      return [`${what} on attempt ${e.attempt}`, e.error || outputs, e.status];
    }
    default:
      return [e.type, "", ""];
  }
}

function timeline(events, createdAt) {
  if (!events.length) return h("p", { class: "muted" }, "No events yet.");
  const start = Date.parse(createdAt || events[0].at);
  return h("ol", { class: "timeline" }, timelineSteps(events).map((step) => {
    const [what, detail, kind] = describe(step);
    const at = step.first.at;
    const offset = Date.parse(at) - start;
    const span = step.count > 1 ? ` – ${clock(step.until.at)}` : "";
    return h("li", { class: kind, dataset: { type: step.first.type } },
      h("div", { class: "when" }, h("time", { datetime: at, title: dateTime(at) }, clock(at)), span,
        offset > 0 ? ` · +${duration(offset)}` : "",
        step.first.attempt ? ` · attempt ${step.first.attempt}` : ""),
      h("div", { class: "what" }, what),
      detail ? h("div", { class: "detail" }, detail) : null,
    );
  }));
}

export async function taskPage(ctx) {
  const [id] = ctx.params;
  const { view } = ctx;
  let task;
  let events;

  const header = h("div");
  const body = h("div");
  fill(view, h("a", { href: "/", class: "back" }, "← All tasks"), header, body);

  function gone() {
    fill(view,
      h("a", { href: "/", class: "back" }, "← All tasks"),
      emptyState("No such task.", `Task ${id} does not exist, was deleted, or is not yours.`),
    );
  }

  function draw() {
    const state = shownState(task);
    const bar = progressBar(task, { big: true });
    fill(header,
      pageHead(h("span", {}, task.flow, " ", badge(state)), {
        sub: h("span", { class: "mono" }, task.id),
        actions: taskActions(task, { changed: (t) => { task = t; draw(); refresh(); }, deleted: gone, labelled: true }),
      }),
      h("div", { class: "panel" }, bar),
    );
    header.bar = bar;
    const waited = between(task.created_at, task.claimed_at);
    const ran = between(task.claimed_at, task.finished_at);
    const params = Object.entries(task.params || {});
    fill(body,
      task.error ? h("section", { class: "panel", "aria-labelledby": "error-h" },
        h("h2", { id: "error-h" }, task.state === "cancelled" ? "Why it stopped" : "Error"),
        h("pre", { class: "failure" }, task.error)) : null,
      h("div", { class: "grid-2" },
        h("section", { class: "panel", "aria-labelledby": "summary-h" },
          h("h2", { id: "summary-h" }, "Summary"),
          facts([
            ["Owner", task.owner],
            ["Priority", String(task.priority)],
            ["Attempt", task.attempt ? `${task.attempt} of ${task.max_attempts}` : `none yet (at most ${task.max_attempts})`],
            ["Worker", task.worker_id ? h("span", { class: "mono" }, task.worker_id) : h("span", { class: "muted" }, "–")],
            ["Created", when(task.created_at)],
            ["Started", when(task.claimed_at)],
            ["Finished", when(task.finished_at)],
            waited ? ["Waited", waited] : null,
            ran ? ["Ran", ran] : null,
          ]),
        ),
        h("section", { class: "panel", "aria-labelledby": "params-h" },
          h("h2", { id: "params-h" }, "Params"),
          params.length ? facts(params.map(([k, v]) => [k, paramValue(v)])) : h("p", { class: "muted" }, "No params."),
        ),
      ),
      h("div", { class: task.inputs.length ? "grid-2" : "" },
        task.inputs.length ? h("section", { class: "panel", "aria-labelledby": "inputs-h" },
          h("h2", { id: "inputs-h" }, "Inputs"), gallery(task.inputs, "input")) : null,
        h("section", { class: "panel", "aria-labelledby": "outputs-h", id: "outputs" },
          h("h2", { id: "outputs-h" }, "Outputs"),
          task.outputs.length
            ? gallery(task.outputs, "output")
            : h("p", { class: "muted" }, task.state === "succeeded" ? "This flow wrote no files." : task.state === "queued" || task.state === "running" ? "Outputs appear here when the task succeeds." : "No outputs.")),
      ),
      h("section", { class: "panel", "aria-labelledby": "timeline-h" },
        h("h2", { id: "timeline-h" }, "Timeline"), timeline(events, task.created_at)),
    );
  }

  async function fetchAll() {
    try {
      [task, events] = await Promise.all([
        api(`/api/tasks/${id}`),
        api(`/api/tasks/${id}/events`).then((r) => r.items),
      ]);
    } catch (err) {
      if (err.status === 404) {
        task = null;
        return false;
      }
      throw err;
    }
    return true;
  }

  const refresh = debouncer(120, async () => {
    if (!ctx.alive()) return;
    try {
      const found = await fetchAll();
      if (!ctx.alive()) return;
      if (found) draw();
      else gone();
    } catch {
      // the banner says the server is away; the resync after it comes back redraws
    }
  });

  let progressTimer = null;
  const unsubscribe = subscribe((event) => {
    if (event.task_id !== id || !task) return;
    if (event.type === "task.progress") {
      if (event.attempt === task.attempt) {
        task = { ...task, progress: event.progress, message: event.message };
        header.bar?.update(task);
      }
      // the timeline catches up at most once a second while progress streams in
      progressTimer ??= setTimeout(() => {
        progressTimer = null;
        refresh("task");
      }, 1000);
      return;
    }
    refresh("task");
  }, () => refresh("task"));
  const stop = () => {
    unsubscribe();
    clearTimeout(progressTimer);
  };
  if (!(await fetchAll())) {
    gone();
    return stop;
  }
  if (!ctx.alive()) return stop;
  ctx.setTitle(`${task.flow} ${id.slice(0, 8)}`);
  draw();
  return stop;
}
