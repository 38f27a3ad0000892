// Small DOM and formatting helpers. Everything the UI shows goes through h(), which
// sets text as text (never as HTML), so data from the server cannot inject markup.

/**
 * Build an element: h("a", {href: "/x", class: "big", onclick: fn}, "text", child, [more]).
 * Props starting with "on" become listeners; `dataset` and `style` objects are merged;
 * false/null/undefined props and children are skipped.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "style") {
      Object.assign(el.style, value);
    } else if (key === "class") {
      el.className = value;
    } else if (key in el && typeof value !== "string") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children; null, false and nested arrays are handled as in h(). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// -- formatting --------------------------------------------------------------

export function size(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  const s = Math.max(0, ms) / 1000;
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

export function ago(iso, now = Date.now()) {
  if (!iso) return "";
  const ms = now - Date.parse(iso);
  if (ms < 5000) return "just now";
  return `${duration(ms).replace(/ \d+ (s|min)$/, "")} ago`;
}

export function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  return `${time}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

export function dateTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString([], {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function percent(fraction) {
  return `${Math.round((Number(fraction) || 0) * 100)} %`;
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}

export function isImage(mediaType) {
  return /^image\/(png|jpeg|gif|webp|bmp|avif)$/.test(String(mediaType || ""));
}

const TRANSPORTS = { db: "database", inprocess: "in-process", nats: "NATS" };

/** How a worker reaches its work, in words. */
export function transportName(transport) {
  return TRANSPORTS[transport] || transport;
}

// -- shared widgets ----------------------------------------------------------

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

export function finished(state) {
  return FINISHED.has(state);
}

/** The state a person should see: "cancelling" once a running task was asked to stop. */
export function shownState(task) {
  return task.cancel_requested && !finished(task.state) ? "cancelling" : task.state;
}

export function badge(state, text = state) {
  return h("span", { class: `badge ${state}` }, text);
}

/** A progress bar with its message and percentage; `update` changes it in place. */
export function progressBar(task, { big = false } = {}) {
  const fill = h("span");
  const message = h("span", { class: "message" });
  const pct = h("span", { class: "pct" });
  const bar = h("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill);
  const el = h("div", { class: `progress${big ? " big" : ""}` }, bar, h("div", { class: "note" }, message, pct));
  el.update = (t) => {
    const value = Math.round((Number(t.progress) || 0) * 100);
    fill.style.width = `${value}%`;
    bar.className = `bar ${t.state}`;
    bar.setAttribute("aria-valuenow", String(value));
    bar.setAttribute("aria-label", `progress ${value} %`);
    pct.textContent = `${value} %`;
    message.textContent = t.state === "succeeded" ? "done" : t.state === "failed" && t.error ? "" : t.message || "";
  };
  el.update(task);
  return el;
}

/** A button that asks for a second click before doing something that cannot be undone. */
export function confirmButton(label, confirmLabel, action, { small = true, title } = {}) {
  let timer = null;
  const button = h("button", { type: "button", class: `danger${small ? " small" : ""}`, title }, label);
  button.addEventListener("click", async () => {
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = confirmLabel;
      timer = setTimeout(() => {
        button.classList.remove("armed");
        button.textContent = label;
      }, 4000);
      return;
    }
    clearTimeout(timer);
    button.disabled = true;
    try {
      await action();
    } finally {
      button.disabled = false;
      button.classList.remove("armed");
      button.textContent = label;
    }
  });
  return button;
}

export function toast(message, { error = false, ms = 5000 } = {}) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = h("div", { class: `toast${error ? " error" : ""}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), ms);
}

export function emptyState(title, ...rest) {
  return h("div", { class: "empty" }, h("strong", {}, title), ...rest);
}

export function loading(text = "Loading…") {
  return h("p", { class: "loading" }, text);
}

/** A page heading block: title, optional subtitle and actions on the right. */
export function pageHead(title, { sub, actions } = {}) {
  return h(
    "div",
    { class: "page-head" },
    h("div", {}, h("h1", { tabindex: "-1" }, title), sub ? h("p", { class: "sub" }, sub) : null),
    actions ? h("div", { class: "actions" }, actions) : null,
  );
}

/** Calls fn at most once per `ms` for each key, with the latest arguments. */
export function debouncer(ms, fn) {
  const timers = new Map();
  return (key, ...args) => {
    clearTimeout(timers.get(key));
    timers.set(key, setTimeout(() => {
      timers.delete(key);
      fn(key, ...args);
    }, ms));
  };
}
