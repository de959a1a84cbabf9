// Live updates (docs/pages.md, "Live updates"): a page that exports LIVE_SECONDS (the map, the edge detail, the
// critical path) asks the API again that often and redraws in place, while the toggle is on and the tab is visible.
// The header shows the toggle and when the page last got its numbers; a failed update keeps the numbers shown and
// says it failed. The choice is remembered in this browser (localStorage), not in the URL: it is how one person
// watches, not what they show.
import {h} from "./dom.js";
import {clock} from "./format.js";

const REMEMBERED = "hopscope.live";

function remembered() {
  try {
    return localStorage.getItem(REMEMBERED) !== "off";
  } catch {
    return true;  // storage refused (a locked-down browser): live, as by default
  }
}

function remember(on) {
  try {
    localStorage.setItem(REMEMBERED, on ? "on" : "off");
  } catch {
    // not remembered; the toggle still works for this page
  }
}

export class LiveUpdates {
  /** `refresh`: redraw the current page in place; resolves when done (it reports through updated()). */
  constructor(refresh) {
    this.refresh = refresh;
    this.on = remembered();
    this.enabled = false;   // the page shown is a live one
    this.interval = 0;      // ms between its updates
    this.timer = null;
    this.running = false;
    this.lastOk = null;     // ms since the epoch of the last successful update
    this.lastError = null;  // the last update's failure, until one succeeds
    this.element = null;
    document.addEventListener("visibilitychange", () => this.wake());
  }

  /** "on", "off" (the user paused it) or "hidden" (paused while the tab is hidden). */
  get state() {
    if (!this.on) return "off";
    return document.visibilityState === "hidden" ? "hidden" : "on";
  }

  /** A new page, live every `seconds` (undefined: static): forget the last one's timer. Returns the header's
   * control, or null for a static page. */
  page(seconds) {
    this.stop();
    const enabled = seconds > 0;
    this.enabled = enabled;
    this.interval = enabled ? seconds * 1000 : 0;
    this.lastOk = null;
    this.lastError = null;
    if (!enabled) return (this.element = null);
    this.button = h("button", {type: "button", class: "live-toggle", "data-testid": "live-toggle",
                               onclick: () => this.toggle()});
    this.label = h("span", {class: "updated", "data-testid": "updated", "aria-live": "polite"});
    this.element = h("div", {class: "live", "data-testid": "live"}, this.button, this.label);
    this.draw();
    return this.element;
  }

  /** The page got its numbers (error null) or failed to: say when, and plan the next update. */
  updated(error = null) {
    if (error) this.lastError = error;
    else [this.lastOk, this.lastError] = [Date.now(), null];
    this.draw();
    this.plan();
  }

  plan() {
    this.stop();
    if (this.enabled && this.state === "on") this.timer = setTimeout(() => this.tick(), this.interval);
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async tick() {
    this.timer = null;
    if (this.running || !this.enabled || this.state !== "on") return;
    this.running = true;
    try {
      await this.refresh();
    } finally {
      this.running = false;
      this.plan();
    }
  }

  toggle() {
    this.on = !this.on;
    remember(this.on);
    this.draw();
    if (this.on) this.tick();
    else this.stop();
  }

  wake() {
    if (!this.enabled) return;
    this.draw();
    if (this.state === "on") this.tick();  // back on screen: the numbers may be old, update now
    else this.stop();
  }

  draw() {
    if (!this.element) return;
    const state = this.state;
    this.element.setAttribute("data-state", state);
    this.button.setAttribute("aria-pressed", String(this.on));
    this.button.textContent = this.on ? "live" : "paused";
    this.button.title = this.on ? `Updating every ${this.interval / 1000} s; click to pause`
      : `Paused; click to update every ${this.interval / 1000} s`;
    const parts = [];
    if (this.lastOk !== null) parts.push(`updated ${clock(this.lastOk * 1000).slice(0, 8)}`);
    if (state === "on") parts.push(`every ${this.interval / 1000} s`);
    if (state === "hidden") parts.push("paused while the tab is hidden");
    if (this.lastError) parts.push(`last update failed: ${this.lastError.title || this.lastError.message}`);
    this.label.textContent = parts.join(" · ");
    this.label.setAttribute("data-at", this.lastOk ?? "");
    this.label.classList.toggle("bad", Boolean(this.lastError));
  }
}
