// The task drawer: every field of one task, its result and feedback, its event history,
// and the coordinator's actions (review, retry, cancel, release). It follows the task live:
// `refresh()` is called when an event for it arrives.
import { ApiError, AuthError } from "./api.js";
import { clock, dateTime, h } from "./dom.js";
import { CANCEL_TASK, RELEASE_TASK, RETRY_TASK, REVIEW_TASK, TASK_DETAIL } from "./queries.js";

const REVIEWER_KEY = "task-service.reviewer";
const ACTIVE = new Set(["PENDING", "ASSIGNED", "RUNNING", "REVIEWING"]);

function storedReviewer() {
  try {
    return localStorage.getItem(REVIEWER_KEY) || "";
  } catch {
    return "";
  }
}

function rememberReviewer(name) {
  try {
    localStorage.setItem(REVIEWER_KEY, name);
  } catch {
    // storage disabled: the name is typed again next time
  }
}

export class Drawer {
  constructor(root, api, { onChanged, onAuth, onOpenTask }) {
    this.root = root;
    this.api = api;
    this.onChanged = onChanged;
    this.onAuth = onAuth;
    this.taskId = null;
    this.loading = null;
    this.title = root.querySelector("#drawer-title");
    this.body = root.querySelector("#drawer-body");
    this.status = root.querySelector("#drawer-alert");
    root.querySelector("#drawer-close").addEventListener("click", () => this.close());
    root.addEventListener("keydown", (event) => event.key === "Escape" && this.close());
    this.body.addEventListener("click", (event) => {
      const link = event.target.closest("[data-task]");
      if (link) onOpenTask(link.dataset.task);
    });
  }

  get openId() {
    return this.taskId;
  }

  async open(id) {
    this.returnFocus = document.activeElement;
    this.taskId = String(id);
    this.root.hidden = false;
    this.title.textContent = `Task #${id}`;
    this.status.textContent = "";
    this.body.replaceChildren(h("p", { class: "hint", text: "Loading…" }));
    await this.refresh();
    this.root.querySelector("#drawer-close").focus();
  }

  close() {
    this.taskId = null;
    this.root.hidden = true;
    this.returnFocus?.focus?.();
  }

  async refresh() {
    const id = this.taskId;
    if (!id) return;
    let data;
    try {
      data = await this.api.request(TASK_DETAIL, { id });
    } catch (error) {
      if (id === this.taskId) this.fail(error);
      return;
    }
    if (id !== this.taskId) return; // another task was opened meanwhile
    if (!data.task) {
      this.body.replaceChildren(h("p", { class: "hint", text: `Task #${id} no longer exists (deleted).` }));
      return;
    }
    this.render(data.task, data.events);
  }

  fail(error) {
    if (error instanceof AuthError) this.onAuth(error);
    this.status.textContent = error.code ? `${error.message} (${error.code})` : error.message;
  }

  render(task, events) {
    const focusedAction = document.activeElement?.dataset?.action;
    const draft = this.body.querySelector("#review-feedback")?.value;
    this.title.textContent = `#${task.id} ${task.title}`;
    const field = (label, value) =>
      value === null || value === undefined || value === "" ? null : [h("dt", { text: label }), h("dd", {}, value)];
    const taskList = (tasks) =>
      tasks.length
        ? h(
            "ul",
            { class: "plain" },
            tasks.map((t) =>
              h(
                "li",
                {},
                h("span", { class: "status-pill", dataset: { status: t.status }, text: t.status }),
                h("button", { type: "button", class: "link", dataset: { task: t.id }, text: `#${t.id} ${t.title}` }),
              ),
            ),
          )
        : null;
    const details = h(
      "dl",
      { class: "fields" },
      field("Status", h("span", { class: "status-pill", dataset: { status: task.status }, text: task.status })),
      field("Project", `${task.project.name} (#${task.project.id})`),
      field("Type", task.taskType),
      field("Priority", String(task.priority)),
      field("Ready", task.status === "PENDING" ? (task.ready ? "yes" : "no") : null),
      field("Assignee", task.assignee ? `${task.assignee.name} (${task.assignee.status})` : null),
      field("Reviewer", task.reviewer),
      field("Requires review", task.requiresReview ? "yes" : "no"),
      field("Attempt", `${task.attempt} of ${task.maxAttempts}`),
      field("Progress", task.progress === null ? null : `${task.progress}%${task.progressMessage ? ` — ${task.progressMessage}` : ""}`),
      field("Tags", task.tags.join(", ")),
      field("Required skills", task.requiredSkills.join(", ")),
      field("Estimated hours", task.estimatedHours === null ? null : String(task.estimatedHours)),
      field("Timeout", task.timeoutMinutes === null ? null : `${task.timeoutMinutes} min`),
      field("Created by", task.createdBy),
      field("Created", dateTime(task.createdAt)),
      field("Updated", dateTime(task.updatedAt)),
      field("Available at", task.availableAt ? dateTime(task.availableAt) : null),
      field("Assigned", task.assignedAt ? dateTime(task.assignedAt) : null),
      field("Started", task.startedAt ? dateTime(task.startedAt) : null),
      field("Submitted", task.submittedAt ? dateTime(task.submittedAt) : null),
      field("Completed", task.completedAt ? dateTime(task.completedAt) : null),
      field("Due", task.dueAt ? dateTime(task.dueAt) : null),
      field("Lease expires", task.leaseExpiresAt ? dateTime(task.leaseExpiresAt) : null),
      field("Parent", task.parent ? taskList([task.parent]) : null),
      field("Waits for", taskList(task.dependencies)),
      field("Blocks", taskList(task.dependents)),
      field("Subtasks", taskList(task.subtasks)),
    );
    const text = (label, value, cls = "") =>
      value ? h("section", { class: `block ${cls}` }, h("h3", { text: label }), h("p", { class: "prose", text: value })) : null;
    const result =
      task.result === null || task.result === undefined
        ? null
        : h("section", { class: "block" }, h("h3", { text: "Result" }), h("pre", { text: JSON.stringify(task.result, null, 2) }));
    const history = h(
      "section",
      { class: "block" },
      h("h3", { text: `History (${events.length} events)` }),
      h(
        "ol",
        { class: "history" },
        events.map((event) =>
          h(
            "li",
            { dataset: { type: event.type } },
            h("time", { datetime: event.createdAt, title: dateTime(event.createdAt), text: clock(event.createdAt) }),
            h("span", { class: "event-type", text: event.type }),
            event.fromStatus || event.toStatus ? ` ${event.fromStatus ?? "—"} → ${event.toStatus ?? "—"}` : "",
            event.actor ? h("span", { class: "event-actor", text: ` by ${event.actor}` }) : "",
            event.message ? h("div", { class: "event-message", text: event.message }) : "",
          ),
        ),
      ),
    );
    const sections = [
      this.actions(task, draft),
      details,
      text("Description", task.description),
      text("Acceptance criteria", task.acceptanceCriteria),
      text("Summary", task.summary),
      text("Reviewer feedback", task.feedback, "feedback"),
      text("Last error", task.lastError, "error"),
      result,
      history,
    ];
    this.body.replaceChildren(...sections.filter(Boolean));
    if (focusedAction) this.body.querySelector(`[data-action="${focusedAction}"]`)?.focus();
  }

  actions(task, draft) {
    const box = h("section", { class: "actions", "aria-label": "Actions" });
    if (task.status === "REVIEWING") {
      const reviewer = h("input", {
        id: "review-reviewer",
        name: "reviewer",
        required: true,
        autocomplete: "off",
        value: task.reviewer || storedReviewer() || "dashboard",
        readOnly: Boolean(task.reviewer),
      });
      const feedback = h("textarea", { id: "review-feedback", name: "feedback", rows: 3, value: draft ?? "" });
      const review = (approved) => async () => {
        rememberReviewer(reviewer.value.trim());
        await this.run(REVIEW_TASK, {
          id: task.id,
          reviewer: reviewer.value.trim(),
          approved,
          feedback: feedback.value.trim() || null,
        });
      };
      box.append(
        h(
          "form",
          { class: "review", onsubmit: (event) => event.preventDefault() },
          h("h3", { text: "Review" }),
          h("label", { for: "review-reviewer", text: "Reviewer" }),
          reviewer,
          h("label", { for: "review-feedback", text: "Feedback" }),
          feedback,
          h(
            "div",
            { class: "buttons" },
            h("button", { type: "button", class: "primary", dataset: { action: "approve" }, onclick: review(true), text: "Approve" }),
            h("button", { type: "button", class: "danger", dataset: { action: "reject" }, onclick: review(false), text: "Reject" }),
          ),
        ),
      );
    }
    const buttons = h("div", { class: "buttons" });
    if (task.status === "FAILED" || task.status === "CANCELLED") {
      buttons.append(
        h("button", { type: "button", dataset: { action: "retry" }, text: "Retry", onclick: () => this.run(RETRY_TASK, { id: task.id }) }),
      );
    }
    if ((task.status === "ASSIGNED" || task.status === "RUNNING") && task.assignee) {
      buttons.append(
        h("button", {
          type: "button",
          dataset: { action: "release" },
          text: "Release",
          title: "Give the task back to the queue",
          onclick: () =>
            this.run(RELEASE_TASK, { id: task.id, agent: task.assignee.name, reason: "released from the dashboard" }),
        }),
      );
    }
    if (ACTIVE.has(task.status)) {
      const confirm = h("button", {
        type: "button",
        class: "danger",
        hidden: true,
        dataset: { action: "confirm-cancel" },
        text: "Yes, cancel it",
        onclick: () => this.run(CANCEL_TASK, { id: task.id, reason: "cancelled from the dashboard" }),
      });
      buttons.append(
        h("button", {
          type: "button",
          dataset: { action: "cancel" },
          text: "Cancel task…",
          onclick: (event) => {
            event.currentTarget.hidden = true;
            confirm.hidden = false;
            confirm.focus();
          },
        }),
        confirm,
      );
    }
    if (buttons.childElementCount) box.append(buttons);
    return box.childElementCount ? box : null;
  }

  async run(mutation, variables) {
    this.status.textContent = "";
    for (const button of this.body.querySelectorAll(".actions button")) button.disabled = true;
    try {
      const data = await this.api.request(mutation, variables);
      this.onChanged(Object.values(data)[0]);
      this.status.textContent = "Done.";
    } catch (error) {
      if (!(error instanceof ApiError || error instanceof AuthError)) console.warn(error);
      this.fail(error);
    }
    await this.refresh();
  }
}
