// What a person can do with a task, the same buttons in the queue and on the task page.
import { api } from "./api.js";
import { confirmButton, finished, h, toast } from "./dom.js";

/**
 * Buttons for `task`: cancel (queued or running), retry (failed or cancelled), a
 * priority field (queued), delete. `changed(task)` gets the task after a change,
 * `deleted()` is called once it is gone.
 */
export function taskActions(task, { changed, deleted, labelled = false }) {
  const items = [];
  const name = labelled ? "" : ` task ${task.id.slice(0, 8)}`;
  const act = async (what, call) => {
    try {
      const updated = await call();
      if (updated) changed(updated);
    } catch (err) {
      if (err.status !== 401) toast(`Could not ${what}: ${err.message}`, { error: true });
    }
  };
  if (!finished(task.state) && !task.cancel_requested) {
    items.push(
      h("button", {
        type: "button",
        class: "small",
        "aria-label": `Cancel${name}`,
        onclick: () => act("cancel", () => api(`/api/tasks/${task.id}/cancel`, { method: "POST" })),
      }, "Cancel"),
    );
  }
  if (task.state === "failed" || task.state === "cancelled") {
    items.push(
      h("button", {
        type: "button",
        class: "small",
        "aria-label": `Retry${name}`,
        onclick: () => act("retry", () => api(`/api/tasks/${task.id}/retry`, { method: "POST" })),
      }, "Retry"),
    );
  }
  if (task.state === "queued") items.push(priorityForm(task, act));
  items.push(
    confirmButton("Delete", "Really delete?", async () => {
      try {
        await api(`/api/tasks/${task.id}`, { method: "DELETE" });
        deleted();
      } catch (err) {
        if (err.status !== 401) toast(`Could not delete: ${err.message}`, { error: true });
      }
    }, { title: "Remove the task and its files (its events stay in the log)" }),
  );
  return h("div", { class: "actions" }, items);
}

function priorityForm(task, act) {
  const input = h("input", {
    type: "number",
    name: "priority",
    min: "-1000",
    max: "1000",
    step: "1",
    value: String(task.priority),
    required: true,
    "aria-label": `Priority of task ${task.id.slice(0, 8)}`,
    title: "Higher runs first among queued tasks",
  });
  const form = h("form", { class: "prio", "data-focus": "priority" },
    input,
    h("button", { type: "submit", class: "small" }, "Set priority"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = Number(input.value);
    if (!Number.isInteger(value) || value < -1000 || value > 1000) {
      toast("Priority must be a whole number from -1000 to 1000", { error: true });
      input.focus();
      return;
    }
    act("change the priority", () => api(`/api/tasks/${task.id}`, { method: "PATCH", json: { priority: value } }));
  });
  return form;
}
