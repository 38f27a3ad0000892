// Whether the server answers. While it does not, a banner says so and counts down to
// the next try; reads wait and retry, and pages reload their data when it is back.
import { sleep } from "./dom.js";

const backListeners = new Set();
let online = true;
let reason = "";
let countdown = null;

function banner() {
  return document.getElementById("banner");
}

function show(text) {
  const el = banner();
  if (!el) return;
  el.hidden = false;
  el.textContent = text;
}

export const connection = {
  get online() {
    return online;
  },

  down(why) {
    online = false;
    reason = why || "the server is unreachable";
    show(`Server unreachable (${reason}) — retrying…`);
  },

  up() {
    if (online) return;
    online = true;
    clearInterval(countdown);
    const el = banner();
    if (el) el.hidden = true;
    for (const listener of backListeners) listener();
  },

  /** Wait before retry number `attempt` (1 s, 2 s, 4 s … at most 10 s), counting down. */
  async wait(attempt) {
    const seconds = Math.min(10, 2 ** Math.min(attempt, 4));
    let left = seconds;
    clearInterval(countdown);
    show(`Server unreachable (${reason}) — retrying in ${left} s…`);
    countdown = setInterval(() => {
      left -= 1;
      if (left > 0) show(`Server unreachable (${reason}) — retrying in ${left} s…`);
      else show(`Server unreachable (${reason}) — retrying now…`);
    }, 1000);
    await sleep(seconds * 1000);
    clearInterval(countdown);
  },

  /** Call `fn` each time the server answers again after an outage; returns an unsubscribe. */
  onBack(fn) {
    backListeners.add(fn);
    return () => backListeners.delete(fn);
  },
};
