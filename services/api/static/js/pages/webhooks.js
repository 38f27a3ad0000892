// Webhook subscriptions: add one (its secret is shown once), enable, remove, and
// see each one's recent deliveries with their attempts.
import { api, session } from "../api.js";
import { EVENT_TYPES } from "../events.js";
import { ago, badge, confirmButton, dateTime, emptyState, h, loading, pageHead, shortId, toast, fill } from "../dom.js";

function deliveriesTable(items) {
  if (!items.length) return h("p", { class: "muted" }, "No deliveries yet.");
  return h("div", { class: "table-wrap" }, h("table", { class: "cards" },
    h("thead", {}, h("tr", {}, ["When", "Event", "Task", "Status", "Attempts", "Last answer"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, items.map((d) => h("tr", {},
      h("td", { class: "lead nowrap" }, h("span", { title: dateTime(d.created_at) }, ago(d.created_at))),
      h("td", { "data-label": "Event" }, h("code", {}, d.event_type)),
      h("td", { "data-label": "Task" }, h("a", { href: `/tasks/${d.task_id}`, class: "mono" }, shortId(d.task_id))),
      h("td", { "data-label": "Status" }, badge(d.status)),
      h("td", { "data-label": "Attempts" }, String(d.attempts)),
      h("td", { "data-label": "Last answer" },
        d.last_status_code ? `HTTP ${d.last_status_code}` : "",
        d.last_error ? h("span", { class: "sub" }, d.last_error) : null,
        d.next_attempt_at ? h("span", { class: "sub" }, `next try ${dateTime(d.next_attempt_at)}`) : null),
    )))));
}

export async function webhooksPage(ctx) {
  const list = h("div", { "aria-live": "polite" }, loading("Loading webhooks…"));
  const secretBox = h("div", { class: "secret", role: "status", hidden: true });
  const flows = await api("/api/flows").then((r) => r.items.map((f) => f.name));
  if (!ctx.alive()) return;

  const url = h("input", { type: "url", id: "hook-url", name: "url", required: true, placeholder: "https://example.org/flowyard", autocomplete: "off" });
  const urlError = h("p", { class: "error", id: "hook-url-error", "aria-live": "polite" });
  url.setAttribute("aria-describedby", "hook-url-error");
  const eventBoxes = EVENT_TYPES.map((type) => h("label", {}, h("input", { type: "checkbox", name: "events", value: type, checked: type === "task.done" }), type));
  const flowBoxes = flows.map((name) => h("label", {}, h("input", { type: "checkbox", name: "flows", value: name }), name));
  const owner = session.managesUsers ? h("input", { id: "hook-owner", name: "owner", placeholder: "every user", autocomplete: "off" }) : null;
  const formError = h("p", { class: "form-error", role: "alert" });
  const form = h("form", { class: "panel run-form", novalidate: true, "aria-labelledby": "add-h" },
    h("h2", { id: "add-h" }, "Add a subscription"),
    h("div", { class: "field" }, h("label", { for: "hook-url" }, "URL *"), url,
      h("p", { class: "help" }, "Each event is POSTed there as JSON, signed per Standard Webhooks."), urlError),
    h("fieldset", { class: "field" }, h("legend", {}, "Events"), h("div", { class: "checks" }, eventBoxes)),
    h("fieldset", { class: "field" }, h("legend", {}, "Flows"), h("div", { class: "checks" }, flowBoxes),
      h("p", { class: "help" }, "None ticked: every flow.")),
    owner ? h("div", { class: "field" }, h("label", { for: "hook-owner" }, "Only this user's tasks"), owner) : null,
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary" }, "Add subscription"), formError),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.textContent = "";
    urlError.textContent = "";
    url.removeAttribute("aria-invalid");
    if (!url.value.trim() || !/^https?:\/\//.test(url.value.trim())) {
      urlError.textContent = "Enter an http:// or https:// URL.";
      url.setAttribute("aria-invalid", "true");
      url.focus();
      return;
    }
    const events = [...form.querySelectorAll("input[name=events]:checked")].map((i) => i.value);
    if (!events.length) {
      formError.textContent = "Tick at least one event type.";
      return;
    }
    const chosen = [...form.querySelectorAll("input[name=flows]:checked")].map((i) => i.value);
    const body = { url: url.value.trim(), events, flows: chosen.length ? chosen : null };
    if (owner?.value.trim()) body.owner = owner.value.trim();
    try {
      const created = await api("/api/webhooks", { method: "POST", json: body });
      const copy = h("button", { type: "button", class: "small" }, "Copy");
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(created.secret);
          copy.textContent = "Copied";
        } catch {
          toast("Select the secret and copy it by hand.");
        }
      });
      fill(secretBox,
        h("strong", {}, `Subscribed ${created.url}. Its signing secret — copy it now, it is not shown again:`),
        h("code", { id: "webhook-secret" }, created.secret),
        h("div", { class: "actions" }, copy),
      );
      secretBox.hidden = false;
      url.value = "";
      await load();
      secretBox.scrollIntoView({ block: "nearest" });
    } catch (err) {
      if (err.status === 401) return;
      if (err.field === "url") {
        urlError.textContent = err.message.replace(/^url: /, "");
        url.setAttribute("aria-invalid", "true");
        url.focus();
      } else {
        formError.textContent = err.message;
      }
    }
  });

  function card(sub) {
    const deliveries = h("div", {}, loading("Loading deliveries…"));
    const details = h("details", {}, h("summary", {}, "Recent deliveries"), deliveries);
    details.addEventListener("toggle", async () => {
      if (!details.open) return;
      try {
        const result = await api(`/api/webhooks/${sub.id}/deliveries?limit=20`);
        fill(deliveries, deliveriesTable(result.items));
      } catch (err) {
        fill(deliveries, h("p", { class: "failure" }, err.message));
      }
    });
    const enable = sub.enabled ? null : h("button", { type: "button", class: "small" }, "Enable");
    enable?.addEventListener("click", async () => {
      try {
        await api(`/api/webhooks/${sub.id}/enable`, { method: "POST" });
        await load();
      } catch (err) {
        toast(`Could not enable: ${err.message}`, { error: true });
      }
    });
    return h("article", { class: "panel", dataset: { webhook: sub.id } },
      h("div", { class: "page-head" },
        h("div", {}, h("h3", {}, sub.url),
          h("span", { class: "muted small" }, `added ${ago(sub.created_at)}`, sub.owner ? ` · ${sub.owner}'s tasks` : sub.all_owners ? " · every user's tasks" : "")),
        h("div", { class: "actions" },
          badge(sub.enabled ? "enabled" : "disabled", sub.enabled ? "enabled" : "disabled"),
          enable,
          confirmButton("Remove", "Really remove?", async () => {
            try {
              await api(`/api/webhooks/${sub.id}`, { method: "DELETE" });
              await load();
            } catch (err) {
              toast(`Could not remove: ${err.message}`, { error: true });
            }
          })),
      ),
      sub.disabled_reason ? h("p", { class: "failure" }, sub.disabled_reason) : null,
      h("p", { class: "small" }, h("b", {}, "Events: "), sub.events.map((e) => h("span", { class: "chip" }, e)),
        h("br"), h("b", {}, "Flows: "), sub.flows ? sub.flows.map((f) => h("span", { class: "chip" }, f)) : "every flow",
        sub.consecutive_failures ? [h("br"), h("b", {}, "Failures in a row: "), String(sub.consecutive_failures)] : null),
      details,
    );
  }

  async function load() {
    const subs = (await api("/api/webhooks")).items;
    if (!ctx.alive()) return;
    fill(list, ...(subs.length
      ? subs.map(card)
      : [emptyState("No subscriptions yet.", "Add one above to have task events POSTed to your service.")]));
  }

  fill(ctx.view,
    pageHead("Webhooks", { sub: "Push task events to your own services. See docs/webhooks.md for signatures and retries." }),
    secretBox,
    form,
    h("h2", {}, "Subscriptions"),
    list,
  );
  await load();
}
