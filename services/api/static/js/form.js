// A flow's run form, generated from its params JSON schema (pydantic's) and its
// declared inputs. Fields check themselves as a person types; the server's field
// errors ({"detail", "field"}) land next to the field they name.
import { h, isImage, size } from "./dom.js";

// -- reading the schema -------------------------------------------------------

function resolve(schema, root, depth = 0) {
  if (!schema || depth > 8) return schema || {};
  if (schema.$ref?.startsWith("#/")) {
    const target = schema.$ref.slice(2).split("/").reduce((node, key) => node?.[key], root);
    const { $ref: _ref, ...rest } = schema;
    return { ...resolve(target, root, depth + 1), ...rest };
  }
  if (Array.isArray(schema.allOf) && schema.allOf.length === 1) {
    const { allOf, ...rest } = schema;
    return { ...resolve(allOf[0], root, depth + 1), ...rest };
  }
  return schema;
}

/** What the form needs to know about one property (pydantic's Optional is anyOf [X, null]). */
export function describeField(name, property, root, requiredNames) {
  const prop = resolve(property, root);
  let base = prop;
  let nullable = false;
  const variants = prop.anyOf || prop.oneOf;
  if (Array.isArray(variants)) {
    const parts = variants.map((v) => resolve(v, root));
    const concrete = parts.filter((p) => p.type !== "null");
    nullable = concrete.length < parts.length;
    base = concrete.length === 1 ? { ...concrete[0] } : { type: "json" };
  }
  let kind = "json";
  const choices = base.enum ?? (base.const !== undefined ? [base.const] : null);
  if (choices) kind = "select";
  else if (base.type === "boolean") kind = "boolean";
  else if (base.type === "integer") kind = "integer";
  else if (base.type === "number") kind = "number";
  else if (base.type === "string") kind = "string";
  const hasDefault = Object.hasOwn(prop, "default");
  return {
    name,
    kind,
    label: prop.title || base.title || name,
    help: prop.description || base.description || "",
    choices,
    nullable,
    hasDefault,
    default: hasDefault ? prop.default : undefined,
    required: requiredNames.includes(name) && !hasDefault,
    minimum: base.minimum ?? base.exclusiveMinimum,
    maximum: base.maximum ?? base.exclusiveMaximum,
    minExclusive: base.exclusiveMinimum !== undefined,
    maxExclusive: base.exclusiveMaximum !== undefined,
    multipleOf: base.multipleOf,
    minLength: base.minLength,
    maxLength: base.maxLength,
    pattern: base.pattern,
  };
}

function rangeText(spec) {
  const parts = [];
  if (spec.minimum !== undefined) parts.push(`${spec.minExclusive ? "greater than" : "at least"} ${spec.minimum}`);
  if (spec.maximum !== undefined) parts.push(`${spec.maxExclusive ? "less than" : "at most"} ${spec.maximum}`);
  return parts.join(", ");
}

/** The error for a raw field value, or "" when it is fine; `value` is what would be sent. */
export function checkValue(spec, raw) {
  const empty = raw === "" || raw === null || raw === undefined;
  if (empty) return spec.required ? { error: "Required." } : { omit: true };
  if (spec.kind === "integer" || spec.kind === "number") {
    const value = Number(raw);
    if (!Number.isFinite(value)) return { error: "Enter a number." };
    if (spec.kind === "integer" && !Number.isInteger(value)) return { error: "Enter a whole number." };
    if (spec.minimum !== undefined && (spec.minExclusive ? value <= spec.minimum : value < spec.minimum)) {
      return { error: `Must be ${spec.minExclusive ? "greater than" : "at least"} ${spec.minimum}.` };
    }
    if (spec.maximum !== undefined && (spec.maxExclusive ? value >= spec.maximum : value > spec.maximum)) {
      return { error: `Must be ${spec.maxExclusive ? "less than" : "at most"} ${spec.maximum}.` };
    }
    return { value };
  }
  if (spec.kind === "string") {
    if (spec.minLength !== undefined && raw.length < spec.minLength) return { error: `At least ${spec.minLength} characters.` };
    if (spec.maxLength !== undefined && raw.length > spec.maxLength) return { error: `At most ${spec.maxLength} characters.` };
    if (spec.pattern && !new RegExp(spec.pattern, "u").test(raw)) return { error: `Must match ${spec.pattern}.` };
    return { value: raw };
  }
  if (spec.kind === "json") {
    try {
      return { value: JSON.parse(raw) };
    } catch {
      return { error: "Not valid JSON." };
    }
  }
  return { value: raw };
}

// -- building fields ------------------------------------------------------------

let counter = 0;

function fieldShell(spec, control, { inline = false } = {}) {
  const id = control.id;
  const help = spec.help || rangeText(spec) ? h("p", { class: "help", id: `${id}-help` }, spec.help, spec.help && rangeText(spec) ? " " : "", rangeText(spec) ? h("span", { class: "hint" }, `(${rangeText(spec)})`) : null) : null;
  const error = h("p", { class: "error", id: `${id}-error`, "aria-live": "polite" });
  const describedBy = [help ? `${id}-help` : null, `${id}-error`].filter(Boolean).join(" ");
  control.setAttribute("aria-describedby", describedBy);
  const wrap = h("div", { class: `field${inline ? " inline" : ""}`, dataset: { field: spec.name } }, control.labelled || [h("label", { for: id }, spec.label, spec.required ? " *" : ""), control.row || control], help, error);
  return { wrap, error };
}

function numberField(spec, id) {
  const input = h("input", {
    type: "number",
    id,
    name: spec.name,
    inputmode: spec.kind === "integer" ? "numeric" : "decimal",
    step: spec.kind === "integer" ? String(spec.multipleOf || 1) : String(spec.multipleOf || "any"),
    min: spec.minimum !== undefined ? String(spec.minimum) : null,
    max: spec.maximum !== undefined ? String(spec.maximum) : null,
    value: spec.default !== undefined && spec.default !== null ? String(spec.default) : "",
    required: spec.required,
    placeholder: spec.nullable && spec.default === null ? "not set" : null,
  });
  const bounded = spec.minimum !== undefined && spec.maximum !== undefined;
  const span = bounded ? spec.maximum - spec.minimum : Infinity;
  if (bounded && span > 0 && span <= 1000) {
    const step = spec.kind === "integer" ? 1 : span / 100;
    const slider = h("input", {
      type: "range",
      min: String(spec.minimum),
      max: String(spec.maximum),
      step: String(step),
      value: input.value || String(spec.minimum),
      "aria-label": `${spec.label} slider`,
      tabindex: "-1",
    });
    slider.addEventListener("input", () => {
      input.value = slider.value;
      input.dispatchEvent(new Event("input", { bubbles: true }));
    });
    input.addEventListener("input", () => {
      if (input.value !== "" && Number.isFinite(Number(input.value))) slider.value = input.value;
    });
    input.row = h("div", { class: "range-row" }, input, slider);
  }
  return input;
}

function control(spec) {
  counter += 1;
  const id = `param-${spec.name}-${counter}`;
  if (spec.kind === "boolean") {
    const input = h("input", { type: "checkbox", role: "switch", id, name: spec.name, checked: Boolean(spec.default) });
    input.labelled = h("label", { class: "switch", for: id }, input, spec.label);
    input.read = () => input.checked;
    return input;
  }
  if (spec.kind === "select") {
    const select = h("select", { id, name: spec.name, required: spec.required });
    if (!spec.required && (spec.nullable || !spec.hasDefault)) select.append(h("option", { value: "" }, spec.nullable ? "not set" : "default"));
    spec.choices.forEach((choice, index) => {
      select.append(h("option", { value: String(index), selected: spec.default === choice }, String(choice)));
    });
    select.read = () => (select.value === "" ? "" : spec.choices[Number(select.value)]);
    return select;
  }
  if (spec.kind === "integer" || spec.kind === "number") {
    const input = numberField(spec, id);
    input.read = () => input.value.trim();
    return input;
  }
  if (spec.kind === "string") {
    const long = (spec.maxLength || 0) > 200;
    const input = h(long ? "textarea" : "input", {
      type: long ? null : "text",
      id,
      name: spec.name,
      value: typeof spec.default === "string" ? spec.default : "",
      required: spec.required,
      minlength: spec.minLength !== undefined ? String(spec.minLength) : null,
      maxlength: spec.maxLength !== undefined ? String(spec.maxLength) : null,
      placeholder: spec.nullable && spec.default === null ? "not set" : null,
      autocomplete: "off",
    });
    if (long) input.value = typeof spec.default === "string" ? spec.default : "";
    input.read = () => input.value;
    return input;
  }
  const area = h("textarea", { id, name: spec.name, spellcheck: "false" });
  area.value = spec.default !== undefined ? JSON.stringify(spec.default, null, 2) : "";
  area.read = () => area.value.trim();
  return area;
}

// -- input files ------------------------------------------------------------------

function accepted(spec) {
  return (spec.media || []).map((m) => (m.includes("/") ? m : `${m}/*`));
}

function acceptedText(spec) {
  const kinds = (spec.media || []).map((m) => (m.includes("/") ? m.split("/")[1].toUpperCase() : m));
  return kinds.length ? kinds.join(" or ") : "any file";
}

function fileMatches(file, accept) {
  if (!accept.length || !file.type) return true;
  return accept.some((a) => (a.endsWith("/*") ? file.type.startsWith(a.slice(0, -1)) : file.type === a));
}

function dropZone(spec, onChange) {
  counter += 1;
  const id = `input-${spec.name}-${counter}`;
  const accept = accepted(spec);
  let file = null;
  let previewUrl = null;
  const input = h("input", { type: "file", id, accept: accept.join(",") || null, "aria-describedby": `${id}-help ${id}-error` });
  const text = h("span", { class: "drop-text" },
    h("strong", {}, `Drop ${/image/.test(accept.join()) ? "an image" : "a file"} here`),
    h("span", {}, "or ", h("u", {}, "choose a file")),
    h("span", { class: "muted small" }, acceptedText(spec)),
  );
  const preview = h("div", { class: "drop-preview", hidden: true });
  const zone = h("div", { class: "drop", dataset: { input: spec.name } }, input, text);
  const error = h("p", { class: "error", id: `${id}-error`, "aria-live": "polite" });
  const wrap = h("div", { class: "field", dataset: { field: `inputs.${spec.name}` } },
    h("label", { for: id }, spec.name, spec.required ? " *" : ""),
    spec.description ? h("p", { class: "help", id: `${id}-help` }, spec.description) : null,
    zone, preview, error);

  const set = (chosen) => {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    error.textContent = "";
    zone.classList.remove("invalid");
    if (chosen && !fileMatches(chosen, accept)) {
      error.textContent = `${chosen.name} is not ${acceptedText(spec)}.`;
      zone.classList.add("invalid");
      chosen = null;
    }
    file = chosen || null;
    if (!file) {
      input.value = "";
      preview.hidden = true;
      preview.replaceChildren();
      onChange();
      return;
    }
    const remove = h("button", { type: "button", class: "small" }, "Remove");
    remove.addEventListener("click", () => {
      set(null);
      input.focus();
    });
    let thumb = null;
    if (isImage(file.type)) {
      previewUrl = URL.createObjectURL(file);
      thumb = h("img", { src: previewUrl, alt: `preview of ${file.name}` });
    }
    preview.replaceChildren(thumb || "", h("span", { class: "file-meta" }, h("strong", {}, file.name), h("span", { class: "muted small" }, size(file.size))), remove);
    preview.hidden = false;
    onChange();
  };
  input.addEventListener("change", () => set(input.files[0] || null));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const type of ["dragleave", "dragend"]) zone.addEventListener(type, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    set(event.dataTransfer?.files?.[0] || null);
  });
  return {
    spec,
    wrap,
    error,
    focus: () => input.focus(),
    get file() {
      return file;
    },
    showError(message) {
      error.textContent = message;
      zone.classList.toggle("invalid", Boolean(message));
    },
  };
}

// -- the form ------------------------------------------------------------------------

/**
 * The run form of `flow` (an item of GET /api/flows). `onSubmit({params, files,
 * priority, owner})` sends it and may throw an ApiError, whose field is shown.
 */
export function runForm(flow, { showOwner = false, onSubmit }) {
  const schema = flow.params_schema || {};
  const required = schema.required || [];
  const fields = Object.entries(schema.properties || {}).map(([name, property]) => {
    const spec = describeField(name, property, schema, required);
    const input = control(spec);
    const { wrap, error } = fieldShell(spec, input);
    const field = {
      spec,
      input,
      wrap,
      error,
      check(show = true) {
        const result = spec.kind === "boolean" || spec.kind === "select" ? { value: input.read(), omit: input.read() === "" } : checkValue(spec, input.read());
        if (show) field.showError(result.error || "");
        return result;
      },
      showError(message) {
        error.textContent = message;
        if (message) input.setAttribute("aria-invalid", "true");
        else input.removeAttribute("aria-invalid");
      },
      focus: () => input.focus(),
    };
    let touched = false;
    input.addEventListener("input", () => touched && field.check());
    input.addEventListener("change", () => {
      touched = true;
      field.check();
    });
    input.addEventListener("blur", () => {
      if (input.read() !== "" || touched) {
        touched = true;
        field.check();
      }
    });
    return field;
  });

  const zones = flow.inputs.map((spec) => dropZone(spec, () => {}));

  const priority = h("input", { type: "number", id: "run-priority", name: "priority", min: "-1000", max: "1000", step: "1", value: "0", inputmode: "numeric", "aria-describedby": "run-priority-help run-priority-error" });
  const priorityError = h("p", { class: "error", id: "run-priority-error", "aria-live": "polite" });
  const owner = showOwner ? h("input", { id: "run-owner", name: "owner", autocomplete: "off", placeholder: "yourself", "aria-describedby": "run-owner-error" }) : null;
  const ownerError = h("p", { class: "error", id: "run-owner-error", "aria-live": "polite" });
  const checkPriority = () => {
    const value = Number(priority.value);
    const bad = priority.value.trim() === "" || !Number.isInteger(value) || value < -1000 || value > 1000;
    priorityError.textContent = bad ? "A whole number from -1000 to 1000." : "";
    if (bad) priority.setAttribute("aria-invalid", "true");
    else priority.removeAttribute("aria-invalid");
    return bad ? null : value;
  };
  priority.addEventListener("change", checkPriority);

  const formError = h("p", { class: "form-error", role: "alert" });
  const submit = h("button", { type: "submit", class: "primary" }, "Run");
  const reset = h("button", { type: "button" }, "Reset to defaults");

  const advanced = h("details", { class: "advanced" },
    h("summary", {}, "Advanced"),
    h("div", { class: "field", dataset: { field: "priority" } },
      h("label", { for: "run-priority" }, "Priority"), priority,
      h("p", { class: "help", id: "run-priority-help" }, "Higher runs first among queued tasks (−1000 to 1000, default 0)."),
      priorityError),
    owner ? h("div", { class: "field", dataset: { field: "owner" } },
      h("label", { for: "run-owner" }, "Run as user"), owner,
      h("p", { class: "help" }, "Admins may queue a task for another user."), ownerError) : null,
  );

  const form = h("form", { class: "run-form", novalidate: true, "aria-label": `Run ${flow.name}` },
    zones.length ? h("fieldset", { class: "panel" }, h("legend", {}, zones.length > 1 ? "Input files" : "Input file"), zones.map((z) => z.wrap)) : null,
    h("fieldset", { class: "panel", dataset: { field: "params" } },
      h("legend", {}, "Parameters"),
      fields.length ? fields.map((f) => f.wrap) : h("p", { class: "muted" }, "This flow takes no parameters."),
      h("p", { class: "error params-error", "aria-live": "polite" }),
      h("div", { class: "advanced-wrap" }, advanced),
    ),
    h("div", { class: "form-actions" }, submit, reset, formError),
  );
  const paramsError = form.querySelector(".params-error");

  function clearErrors() {
    formError.textContent = "";
    paramsError.textContent = "";
    priorityError.textContent = "";
    ownerError.textContent = "";
    for (const z of zones) z.showError("");
    for (const f of fields) f.showError("");
  }

  /** The server's error, next to the field it names. */
  function showServerError(err) {
    const field = err.field || "";
    const message = err.message.replace(/^[\w.]+: /, "");
    if (field.startsWith("params.")) {
      const name = field.split(".")[1];
      const target = fields.find((f) => f.spec.name === name);
      if (target) {
        target.showError(message.charAt(0).toUpperCase() + message.slice(1));
        target.focus();
        return;
      }
    }
    if (field === "params") {
      paramsError.textContent = message;
      return;
    }
    if (field.startsWith("inputs") && zones.length) {
      zones[0].showError(message);
      zones[0].focus();
      return;
    }
    if (field === "priority") {
      advanced.open = true;
      priorityError.textContent = message;
      priority.focus();
      return;
    }
    if (field === "owner" && owner) {
      advanced.open = true;
      ownerError.textContent = message;
      owner.focus();
      return;
    }
    formError.textContent = err.message;
  }

  reset.addEventListener("click", () => {
    const fresh = runForm(flow, { showOwner, onSubmit });
    form.replaceWith(fresh);
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const params = {};
    let firstBad = null;
    for (const field of fields) {
      const result = field.check();
      if (result.error) firstBad ??= field;
      else if (!result.omit) params[field.spec.name] = result.value;
    }
    const files = [];
    let gap = false;
    for (const zone of zones) {
      if (zone.file) {
        if (gap) {
          zone.showError("Fill the inputs above first: files fill the flow's inputs in order.");
          firstBad ??= zone;
        }
        files.push(zone.file);
      } else {
        gap = true;
        if (zone.spec.required) {
          zone.showError(`Required: ${acceptedText(zone.spec)}.`);
          firstBad ??= zone;
        }
      }
    }
    const prio = checkPriority();
    if (prio === null) {
      advanced.open = true;
      firstBad ??= { focus: () => priority.focus() };
    }
    if (firstBad) {
      formError.textContent = "Fix the fields marked above.";
      firstBad.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Starting…";
    try {
      await onSubmit({ params, files, priority: prio, owner: owner?.value.trim() || null });
    } catch (err) {
      if (err.status !== 401) showServerError(err);
    } finally {
      submit.disabled = false;
      submit.textContent = "Run";
    }
  });
  return form;
}
