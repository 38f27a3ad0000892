// The flow catalog, and one flow's run form.
import { api, session } from "../api.js";
import { emptyState, fill, h, pageHead, transportName } from "../dom.js";
import { runForm } from "../form.js";

function inputsText(flow) {
  if (!flow.inputs.length) return "no input files";
  return flow.inputs.map((i) => `${i.name} (${(i.media || []).map((m) => m.split("/").pop().toUpperCase()).join(", ") || "any file"})`).join(", ");
}

function outputsText(flow) {
  return flow.outputs.length ? flow.outputs.map((o) => `${o.name} (${o.media_type})`).join(", ") : "depends on the run";
}

/** The online workers that have `name` installed. */
function runners(workers, name) {
  return workers.filter((w) => w.online && w.flows.includes(name));
}

function runnersText(list) {
  if (!list.length) return h("span", { class: "warn-text" }, "no online worker has it: tasks wait until one starts");
  return list.map((w) => `${w.name} (${transportName(w.transport)})`).join(", ");
}

export async function flowsPage(ctx) {
  const [flows, workers] = await Promise.all([api("/api/flows"), api("/api/workers").then((r) => r.items)]);
  if (!ctx.alive()) return;
  const cards = flows.items.map((flow) => h("article", { class: "panel flow-card" },
    h("h2", {}, h("a", { href: `/flows/${encodeURIComponent(flow.name)}` }, flow.name)),
    h("p", {}, flow.description || h("span", { class: "muted" }, "No description.")),
    h("div", { class: "meta" },
      h("span", {}, h("b", {}, "Inputs: "), inputsText(flow)),
      h("span", {}, h("b", {}, "Outputs: "), outputsText(flow)),
      h("span", {}, h("b", {}, "Runs on: "), runnersText(runners(workers, flow.name))),
    ),
    h("a", { href: `/flows/${encodeURIComponent(flow.name)}`, class: "button primary run", "aria-label": `Run ${flow.name}` }, "Run"),
  ));
  const broken = Object.entries(flows.broken || {});
  fill(ctx.view,
    pageHead("Flows", { sub: "What this server can run. Pick one to fill in its parameters." }),
    cards.length ? h("div", { class: "cards-grid" }, cards) : emptyState("No flows are installed.", "Install a package that registers flowyard flows, then restart the server."),
    broken.length ? h("section", { class: "panel", "aria-labelledby": "broken-h" },
      h("h2", { id: "broken-h" }, "Flows that could not be loaded"),
      h("ul", {}, broken.map(([name, reason]) => h("li", {}, h("code", {}, name), ": ", reason)))) : null,
  );
}

export async function flowPage(ctx) {
  const [name] = ctx.params;
  const [flows, workers] = await Promise.all([api("/api/flows"), api("/api/workers").then((r) => r.items)]);
  if (!ctx.alive()) return;
  const flow = flows.items.find((f) => f.name === name);
  if (!flow) {
    fill(ctx.view,
      h("a", { href: "/flows", class: "back" }, "← All flows"),
      emptyState(`No flow is called ${name}.`, h("a", { href: "/flows" }, "See the flows this server has"), "."),
    );
    return;
  }
  ctx.setTitle(`Run ${flow.name}`);
  const picker = h("select", { id: "flow-picker" },
    flows.items.map((f) => h("option", { value: f.name, selected: f.name === flow.name }, f.name)));
  // another flow is another form: nothing of this one's params carries over
  picker.addEventListener("change", () => ctx.navigate(`/flows/${encodeURIComponent(picker.value)}`));

  const form = runForm(flow, {
    showOwner: session.managesUsers,
    onSubmit: async ({ params, files, priority, owner }) => {
      let task;
      if (files.length) {
        const data = new FormData();
        data.set("flow", flow.name);
        data.set("params", JSON.stringify(params));
        data.set("priority", String(priority));
        if (owner) data.set("owner", owner);
        for (const file of files) data.append("inputs", file, file.name);
        task = await api("/api/tasks", { method: "POST", form: data });
      } else {
        const body = { flow: flow.name, params, priority };
        if (owner) body.owner = owner;
        task = await api("/api/tasks", { method: "POST", json: body });
      }
      ctx.navigate(`/tasks/${task.id}`);
    },
  });

  fill(ctx.view,
    h("a", { href: "/flows", class: "back" }, "← All flows"),
    pageHead(h("span", { class: "mono" }, flow.name), {
      sub: flow.description,
      actions: h("label", { class: "small" }, "Switch flow ", picker),
    }),
    h("p", { class: "muted small" },
      `Inputs: ${inputsText(flow)} · Outputs: ${outputsText(flow)} · Runs on: `, runnersText(runners(workers, flow.name))),
    form,
  );
}
