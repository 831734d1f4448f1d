// The agents panel: one row per agent, patched in place. Current tasks come from the
// board's cards, presence from agentPresence; "last heartbeat" ticks every second.
import { ago, h, ms, setText } from "./dom.js";

const ACTIVE = new Set(["ASSIGNED", "RUNNING", "REVIEWING"]);
const ORDER = { BUSY: 0, ONLINE: 1, OFFLINE: 2 };
// The server turns an agent OFFLINE when it has not heartbeated for HEARTBEAT_TIMEOUT_SECONDS,
// so while it is ONLINE or BUSY its last heartbeat is at most that old.
const ALIVE = new Set(["ONLINE", "BUSY"]);

export class AgentsPanel {
  constructor(root, countEl, { onOpenTask }) {
    this.root = root;
    this.countEl = countEl;
    this.rows = new Map(); // name -> { agent, el, parts, tasksText }
    this.activeByAgent = new Map(); // name -> Map(taskId -> title)
    this.heartbeatTimeout = null; // seconds, from GET / (null: unknown)
    root.addEventListener("click", (event) => {
      const link = event.target.closest("[data-task]");
      if (link) onOpenTask(link.dataset.task);
    });
  }

  setAgents(agents) {
    for (const agent of agents) this.upsert(agent, { sort: false });
    const names = new Set(agents.map((agent) => agent.name));
    for (const name of this.rows.keys()) if (!names.has(name)) this.remove(name);
    this.sort();
  }

  upsert(agent, { sort = true } = {}) {
    let row = this.rows.get(agent.name);
    if (!row) {
      row = this.build(agent);
      this.rows.set(agent.name, row);
      this.root.append(row.el);
    } else {
      // Presence snapshots can be older than what a task event already told us.
      const seen = Math.max(ms(row.agent.lastHeartbeatAt), ms(agent.lastHeartbeatAt));
      row.agent = { ...row.agent, ...agent };
      if (seen) row.agent.lastHeartbeatAt = new Date(seen).toISOString();
    }
    this.patch(row);
    if (sort) this.sort();
  }

  remove(name) {
    this.rows.get(name)?.el.remove();
    this.rows.delete(name);
  }

  has(name) {
    return this.rows.has(name);
  }

  /** Any agent call is a heartbeat: an event by `name` at `at` moves its heartbeat forward. */
  sawActivity(name, at) {
    const row = this.rows.get(name);
    if (row && ms(at) > ms(row.agent.lastHeartbeatAt)) {
      row.agent.lastHeartbeatAt = at;
      this.tickRow(row, Date.now());
    }
  }

  /** Every agent's current tasks from the board's full list (at load). */
  setTasks(tasks) {
    this.activeByAgent.clear();
    for (const task of tasks) {
      const name = task.assignee?.name;
      if (!name || !ACTIVE.has(task.status)) continue;
      if (!this.activeByAgent.has(name)) this.activeByAgent.set(name, new Map());
      this.activeByAgent.get(name).set(task.id, task.title);
    }
    for (const row of this.rows.values()) this.patchTasks(row);
  }

  /** Keep each agent's current tasks in step with the board: `before` and `after` are a
   * task's card before and after a change (either may be null). */
  taskChanged(before, after) {
    const touched = new Set();
    const previous = before?.assignee?.name;
    if (previous && this.activeByAgent.get(previous)?.delete(before.id)) touched.add(previous);
    const name = after?.assignee?.name;
    if (name && ACTIVE.has(after.status)) {
      if (!this.activeByAgent.has(name)) this.activeByAgent.set(name, new Map());
      this.activeByAgent.get(name).set(after.id, after.title);
      touched.add(name);
    }
    for (const agent of touched) {
      const row = this.rows.get(agent);
      if (row) this.patchTasks(row);
    }
  }

  tick() {
    const now = Date.now();
    for (const row of this.rows.values()) this.tickRow(row, now);
  }

  /** HEARTBEAT_TIMEOUT_SECONDS from GET /: the bound on a live agent's heartbeat age. */
  setHeartbeatTimeout(seconds) {
    this.heartbeatTimeout = Number(seconds) > 0 ? Number(seconds) : null;
    this.tick();
  }

  /** A bare `heartbeat` call writes no event, so the page may not have seen an agent's
   * latest one. Past the timeout, a live agent's age is shown as the server's bound,
   * "< 90 s", rather than a count that would keep growing. */
  tickRow(row, now) {
    const { lastHeartbeatAt, status } = row.agent;
    const timeout = this.heartbeatTimeout;
    const bounded = timeout && lastHeartbeatAt && ALIVE.has(status) && now - ms(lastHeartbeatAt) > timeout * 1000;
    setText(row.parts.heartbeat, bounded ? `< ${timeout} s` : ago(lastHeartbeatAt, now));
  }

  sort() {
    const rows = [...this.rows.values()].sort(
      (a, b) =>
        (ORDER[a.agent.status] ?? 3) - (ORDER[b.agent.status] ?? 3) || a.agent.name.localeCompare(b.agent.name),
    );
    let previous = null;
    for (const row of rows) {
      const expected = previous ? previous.el.nextElementSibling : this.root.firstElementChild;
      if (expected !== row.el) {
        if (previous) previous.el.after(row.el);
        else this.root.prepend(row.el);
      }
      previous = row;
    }
    const counts = { ONLINE: 0, BUSY: 0, OFFLINE: 0 };
    for (const row of rows) counts[row.agent.status] = (counts[row.agent.status] ?? 0) + 1;
    setText(this.countEl, `${rows.length} · ${counts.BUSY} busy · ${counts.OFFLINE} offline`);
  }

  build(agent) {
    const parts = {
      status: h("span", { class: "status-dot" }),
      statusText: h("span", { class: "status-text" }),
      name: h("span", { class: "agent-name" }),
      role: h("span", { class: "role" }),
      skills: h("span", { class: "skills" }),
      tasks: h("ul", { class: "agent-tasks" }),
      heartbeat: h("span", { class: "heartbeat-age" }),
      success: h("span", { class: "success" }),
    };
    const el = h(
      "li",
      { class: "agent" },
      h("div", { class: "agent-top" }, parts.status, parts.name, parts.statusText),
      h("div", { class: "agent-sub" }, parts.role, parts.skills),
      parts.tasks,
      h(
        "div",
        { class: "agent-foot" },
        h("span", { class: "heartbeat", title: "time since the last heartbeat seen" }, "♥ ", parts.heartbeat),
        parts.success,
      ),
    );
    return { agent: { ...agent }, el, parts, skillsText: null };
  }

  patch(row) {
    const { agent, el, parts } = row;
    el.dataset.name = agent.name;
    el.dataset.status = agent.status;
    setText(parts.name, agent.name);
    setText(parts.role, agent.role || "");
    const skillsText = agent.skills.join(", ");
    if (skillsText !== row.skillsText) {
      row.skillsText = skillsText;
      parts.skills.replaceChildren(...agent.skills.map((skill) => h("span", { class: "skill", text: skill })));
    }
    const stats = agent.stats;
    const finished = stats.completedTasks + stats.failedTasks;
    setText(parts.success, finished ? `${Math.round(stats.successRate * 100)}% ok (${finished})` : "no results yet");
    parts.success.title = `${stats.completedTasks} completed, ${stats.failedTasks} failed or rejected`;
    this.patchTasks(row);
    this.tickRow(row, Date.now());
  }

  patchTasks(row) {
    const active = this.activeByAgent.get(row.agent.name) ?? new Map();
    const load = active.size ? ` · ${active.size}/${row.agent.maxConcurrentTasks}` : "";
    setText(row.parts.statusText, row.agent.status + load);
    const text = [...active].map(([id, title]) => `${id}:${title}`).join("\u0000");
    if (text === row.tasksText) return;
    row.tasksText = text;
    row.parts.tasks.replaceChildren(
      ...[...active].map(([id, title]) =>
        h("li", {}, h("button", { type: "button", class: "link", dataset: { task: id }, text: `#${id} ${title}` })),
      ),
    );
  }
}
