// The task board: one column per status, one card per task. Cards are kept in a Map by id
// and patched in place; a change moves or re-sorts one card, never re-renders a column.
import { h, ms, setText } from "./dom.js";

export const STATUSES = ["PENDING", "ASSIGNED", "RUNNING", "REVIEWING", "COMPLETED", "FAILED", "CANCELLED"];
export const STATUS_LABELS = {
  PENDING: "Pending",
  ASSIGNED: "Assigned",
  RUNNING: "Running",
  REVIEWING: "Reviewing",
  COMPLETED: "Completed",
  FAILED: "Failed",
  CANCELLED: "Cancelled",
};

// Pending cards in (roughly) claim order: ready first, then priority, then age. Every other
// column shows the most recently changed first.
function sortKey(task) {
  if (task.status === "PENDING") return [task.ready ? 0 : 1, -task.priority, ms(task.createdAt), Number(task.id)];
  return [-ms(task.updatedAt), -Number(task.id)];
}

function compareKeys(a, b) {
  for (let i = 0; i < a.length; i += 1) {
    if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  }
  return 0;
}

function sameKey(a, b) {
  return a.length === b.length && compareKeys(a, b) === 0;
}

export class Board {
  constructor(root, { onOpen }) {
    this.root = root;
    this.cards = new Map(); // id -> { task, key, el, parts, visible }
    this.columns = new Map(); // status -> { el, list, order: [card], countEl, visible }
    this.filter = { project: "", tag: "", assignee: "", text: "" };
    for (const status of STATUSES) {
      const countEl = h("span", { class: "count", "aria-label": "tasks shown" }, "0");
      const list = h("ol", { class: "cards", "aria-labelledby": `col-${status}` });
      const el = h(
        "section",
        { class: "column", dataset: { status } },
        h("header", {}, h("h2", { id: `col-${status}`, text: STATUS_LABELS[status] }), countEl),
        list,
      );
      this.columns.set(status, { el, list, order: [], countEl, visible: 0 });
      root.append(el);
    }
    root.addEventListener("click", (event) => {
      const card = event.target.closest(".card");
      if (card) onOpen(card.dataset.id);
    });
  }

  /** First render: every card built off-document, then one append per column. */
  setTasks(tasks) {
    for (const column of this.columns.values()) {
      column.list.replaceChildren();
      column.order = [];
    }
    this.cards.clear();
    const byStatus = new Map(STATUSES.map((status) => [status, []]));
    for (const task of tasks) {
      const card = this.build(task);
      this.cards.set(task.id, card);
      byStatus.get(task.status)?.push(card);
    }
    for (const [status, cards] of byStatus) {
      cards.sort((a, b) => compareKeys(a.key, b.key));
      const column = this.columns.get(status);
      column.order = cards;
      const fragment = document.createDocumentFragment();
      for (const card of cards) fragment.append(card.el);
      column.list.append(fragment);
    }
    this.refreshCounts();
  }

  get(id) {
    return this.cards.get(String(id))?.task;
  }

  tasks() {
    return Array.from(this.cards.values(), (card) => card.task);
  }

  /** Add or patch one card; it moves column or position only when its status or order changed. */
  upsert(task) {
    let card = this.cards.get(task.id);
    if (!card) {
      card = this.build(task);
      this.cards.set(task.id, card);
      this.place(card);
      return;
    }
    const before = card.task;
    card.task = task;
    this.patch(card);
    const key = sortKey(task);
    if (before.status !== task.status || !sameKey(key, card.key)) {
      this.unplace(card, before.status);
      card.key = key;
      this.place(card);
    }
  }

  remove(id) {
    const card = this.cards.get(String(id));
    if (!card) return;
    this.unplace(card, card.task.status);
    this.cards.delete(String(id));
  }

  setFilter(filter) {
    this.filter = filter;
    for (const card of this.cards.values()) this.applyFilter(card);
    this.refreshCounts();
  }

  matches(task) {
    const { project, tag, assignee, text } = this.filter;
    if (project && task.project?.id !== project) return false;
    if (tag && !task.tags.includes(tag)) return false;
    if (assignee === "-" ? task.assignee : assignee && task.assignee?.name !== assignee) return false;
    if (text) {
      const haystack = `#${task.id} ${task.title} ${task.taskType} ${task.tags.join(" ")}`.toLowerCase();
      if (!haystack.includes(text)) return false;
    }
    return true;
  }

  refreshCounts() {
    const filtered = Object.values(this.filter).some(Boolean);
    for (const column of this.columns.values()) {
      const total = column.order.length;
      let visible = 0;
      for (const card of column.order) if (card.visible) visible += 1;
      setText(column.countEl, filtered ? `${visible} / ${total}` : String(total));
      column.el.classList.toggle("empty", visible === 0);
    }
  }

  // -- cards ------------------------------------------------------------------------------

  build(task) {
    const parts = {
      id: h("span", { class: "card-id" }),
      priority: h("span", { class: "priority" }),
      blocked: h("span", { class: "blocked", hidden: true }),
      title: h("button", { class: "card-title", type: "button" }),
      tags: h("span", { class: "tags" }),
      assignee: h("span", { class: "assignee" }),
      attempt: h("span", { class: "attempt" }),
      progress: h("progress", { max: 100, hidden: true }),
    };
    const el = h(
      "li",
      { class: "card" },
      h("div", { class: "card-top" }, parts.id, parts.priority, parts.blocked),
      parts.title,
      parts.tags,
      h("div", { class: "card-meta" }, parts.assignee, parts.attempt),
      parts.progress,
    );
    const card = { task, key: sortKey(task), el, parts, tagsText: null, visible: true };
    this.patch(card);
    return card;
  }

  patch(card) {
    const { task, el, parts } = card;
    el.dataset.id = task.id;
    el.dataset.status = task.status;
    setText(parts.id, `#${task.id}`);
    setText(parts.priority, `P${task.priority}`);
    parts.priority.className = `priority ${task.priority >= 8 ? "high" : task.priority <= 3 ? "low" : ""}`;
    // Pending and not ready: waiting for its dependencies, or scheduled for later.
    const waiting = task.status === "PENDING" && !task.ready;
    const scheduled = waiting && ms(task.availableAt) > Date.now();
    parts.blocked.hidden = !waiting;
    if (waiting) {
      setText(parts.blocked, scheduled ? "Scheduled" : "Blocked");
      parts.blocked.title = scheduled ? `claimable from ${new Date(task.availableAt).toLocaleString()}` : "waits for its dependencies";
    }
    el.classList.toggle("is-blocked", waiting);
    setText(parts.title, task.title);
    parts.title.setAttribute(
      "aria-label",
      `Task ${task.id}: ${task.title}. ${task.status}${waiting ? (scheduled ? ", scheduled" : ", blocked") : ""}, ` +
        `priority ${task.priority}` +
        (task.assignee ? `, assigned to ${task.assignee.name}` : ""),
    );
    const tagsText = task.tags.join("\u0000");
    if (tagsText !== card.tagsText) {
      card.tagsText = tagsText;
      parts.tags.replaceChildren(...task.tags.map((tag) => h("span", { class: "tag", text: tag })));
    }
    setText(parts.assignee, task.assignee ? task.assignee.name : "unassigned");
    parts.assignee.classList.toggle("none", !task.assignee);
    setText(parts.attempt, task.attempt ? `try ${task.attempt}/${task.maxAttempts}` : "");
    const showProgress = task.progress !== null && task.progress !== undefined && task.status !== "COMPLETED";
    parts.progress.hidden = !showProgress;
    if (showProgress && parts.progress.value !== task.progress) {
      parts.progress.value = task.progress;
      parts.progress.textContent = `${task.progress}%`;
      parts.progress.title = `${task.progress}% done`;
    }
    this.applyFilter(card);
  }

  applyFilter(card) {
    card.visible = this.matches(card.task);
    card.el.hidden = !card.visible;
  }

  place(card) {
    const column = this.columns.get(card.task.status);
    if (!column) return;
    const { order } = column;
    let low = 0;
    let high = order.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (compareKeys(order[middle].key, card.key) < 0) low = middle + 1;
      else high = middle;
    }
    order.splice(low, 0, card);
    column.list.insertBefore(card.el, order[low + 1]?.el ?? null);
  }

  unplace(card, status) {
    const column = this.columns.get(status);
    if (!column) return;
    const index = column.order.indexOf(card);
    if (index >= 0) column.order.splice(index, 1);
    card.el.remove();
  }
}
