// Live updates: one EventSource on /api/events/stream for the whole app. Pages
// subscribe before they load what they show, with a handler for events and a
// `resync` for after a gap (the stream (re)opened or the server came back), when
// they load it again: nothing that happens in between is missed.
import { connection } from "./connection.js";
import { EVENT_TYPES } from "./events.js";

const subscribers = new Set();
let source = null;
let retryTimer = null;

function indicator(state) {
  const el = document.getElementById("live");
  if (!el) return;
  el.className = `live ${state}`;
  el.textContent = state === "on" ? "live" : state === "off" ? "reconnecting…" : "";
  el.title = state === "on" ? "Updates arrive as they happen" : "Live updates paused; reconnecting";
}

function resyncAll() {
  for (const sub of subscribers) sub.resync?.();
}

function open() {
  if (source || !subscribers.size) return;
  source = new EventSource("/api/events/stream");
  source.addEventListener("open", () => {
    indicator("on");
    // whatever happened before the stream was open (or while it reconnected) was missed
    resyncAll();
  });
  source.addEventListener("error", () => {
    indicator("off");
    if (source && source.readyState === EventSource.CLOSED) {
      // the browser gave up (e.g. an HTTP error answer): try again ourselves
      source = null;
      clearTimeout(retryTimer);
      retryTimer = setTimeout(open, 3000);
    }
  });
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      for (const sub of subscribers) sub.event(event);
    });
  }
}

function close() {
  clearTimeout(retryTimer);
  if (source) source.close();
  source = null;
  indicator("");
}

connection.onBack(resyncAll);

/** Subscribe to every event the caller may see; returns the unsubscribe function. */
export function subscribe(event, resync) {
  const sub = { event, resync };
  subscribers.add(sub);
  open();
  return () => {
    subscribers.delete(sub);
    if (!subscribers.size) close();
  };
}
