// The live event feed, newest first. Paused, it keeps what arrives and shows it on resume.
import { clock, h, setText } from "./dom.js";

const MAX_ITEMS = 300;

export class Feed {
  constructor(list, pauseButton, { titleOf }) {
    this.list = list;
    this.pauseButton = pauseButton;
    this.titleOf = titleOf;
    this.paused = false;
    this.held = [];
    pauseButton.addEventListener("click", () => this.setPaused(!this.paused));
  }

  /** Replace the feed with `events` (newest first). */
  reset(events) {
    this.held = [];
    this.list.replaceChildren(...events.slice(0, MAX_ITEMS).map((event) => this.item(event)));
  }

  /** Show `events` (oldest first, as they arrived) on top, or hold them while paused. */
  add(events) {
    this.held.push(...events);
    if (this.held.length > MAX_ITEMS) this.held.splice(0, this.held.length - MAX_ITEMS);
    if (this.paused) this.showPause();
    else this.release();
  }

  setPaused(paused) {
    this.paused = paused;
    if (!paused) this.release();
    this.showPause();
  }

  release() {
    if (!this.held.length) return;
    const fragment = document.createDocumentFragment();
    for (let i = this.held.length - 1; i >= 0; i -= 1) fragment.append(this.item(this.held[i]));
    this.held = [];
    this.list.prepend(fragment);
    while (this.list.childElementCount > MAX_ITEMS) this.list.lastElementChild.remove();
  }

  showPause() {
    this.pauseButton.setAttribute("aria-pressed", String(this.paused));
    setText(this.pauseButton, this.paused ? `Resume${this.held.length ? ` (${this.held.length} new)` : ""}` : "Pause");
  }

  item(event) {
    const change = event.fromStatus || event.toStatus ? `${event.fromStatus ?? "—"} → ${event.toStatus ?? "—"}` : "";
    const title = event.task?.title ?? this.titleOf(event.taskId);
    return h(
      "li",
      { class: "event", dataset: { id: event.id, type: event.type } },
      h(
        "div",
        { class: "event-top" },
        h("time", { datetime: event.createdAt, text: clock(event.createdAt) }),
        h("span", { class: "event-type", text: event.type }),
        h("span", { class: "event-actor", text: event.actor || "system" }),
      ),
      h("button", {
        type: "button",
        class: "link",
        dataset: { task: event.taskId },
        text: `#${event.taskId}${title ? ` ${title}` : ""}`,
      }),
      change ? h("div", { class: "event-change", text: change }) : null,
      event.message ? h("div", { class: "event-message", text: event.message }) : null,
    );
  }
}
