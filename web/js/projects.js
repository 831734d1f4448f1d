// Projects with their progress, and a project's dependency tree (what blocks what).
import { AuthError } from "./api.js";
import { debounce, h, setText } from "./dom.js";
import { PROJECT_GRAPH } from "./queries.js";

export class ProjectsPanel {
  constructor(root, { onSelect, onGraph }) {
    this.root = root;
    this.rows = new Map(); // id -> { project, el, parts }
    this.selected = "";
    root.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      const id = button.closest(".project").dataset.id;
      if (button.dataset.action === "graph") onGraph(id);
      else onSelect(this.selected === id ? "" : id);
    });
  }

  has(id) {
    return this.rows.has(String(id));
  }

  get(id) {
    return this.rows.get(String(id))?.project;
  }

  projects() {
    return Array.from(this.rows.values(), (row) => row.project);
  }

  setProjects(projects) {
    const ids = new Set(projects.map((project) => project.id));
    for (const [id, row] of this.rows) {
      if (!ids.has(id)) {
        row.el.remove();
        this.rows.delete(id);
      }
    }
    for (const project of projects) this.upsert(project);
    const sorted = [...this.rows.values()].sort((a, b) => Number(b.project.id) - Number(a.project.id));
    this.root.replaceChildren(...sorted.map((row) => row.el));
  }

  upsert(project) {
    let row = this.rows.get(project.id);
    if (!row) {
      const parts = {
        name: h("button", { type: "button", class: "project-name", dataset: { action: "select" } }),
        status: h("span", { class: "project-status" }),
        bar: h("progress", { max: 100 }),
        numbers: h("span", { class: "project-numbers" }),
      };
      const el = h(
        "li",
        { class: "project" },
        h("div", { class: "project-top" }, parts.name, parts.status),
        parts.bar,
        h(
          "div",
          { class: "project-foot" },
          parts.numbers,
          h("button", { type: "button", class: "link", dataset: { action: "graph" }, text: "Dependencies" }),
        ),
      );
      row = { project, el, parts };
      this.rows.set(project.id, row);
      this.root.prepend(el);
    }
    row.project = project;
    const { parts, el } = row;
    const { progress } = project;
    el.dataset.id = project.id;
    el.classList.toggle("selected", this.selected === project.id);
    setText(parts.name, project.name);
    parts.name.setAttribute("aria-pressed", String(this.selected === project.id));
    parts.name.title = "Show only this project's tasks";
    setText(parts.status, project.status === "ACTIVE" ? "" : project.status);
    parts.bar.value = progress.percentComplete;
    setText(parts.bar, `${Math.round(progress.percentComplete)}%`);
    parts.bar.setAttribute("aria-label", `${project.name}: ${Math.round(progress.percentComplete)}% complete`);
    setText(parts.numbers, `${Math.round(progress.percentComplete)}% · ${progress.completed}/${progress.total} done`);
  }

  select(id) {
    this.selected = id;
    for (const row of this.rows.values()) this.upsert(row.project);
  }
}

/** The dialog with one project's dependency tree; it follows the project's events. */
export class DependencyDialog {
  constructor(api, { statusOf, onOpenTask, onAuth }) {
    this.api = api;
    this.statusOf = statusOf;
    this.onAuth = onAuth;
    this.projectId = null;
    this.dialog = document.getElementById("graph-dialog");
    this.title = document.getElementById("graph-title");
    this.body = document.getElementById("graph-body");
    this.refreshSoon = debounce(() => this.refresh(), 500);
    this.dialog.addEventListener("click", (event) => {
      const link = event.target.closest("[data-task]");
      if (link) {
        this.dialog.close();
        onOpenTask(link.dataset.task);
      } else if (event.target.closest("[data-close]")) {
        this.dialog.close();
      }
    });
    this.dialog.addEventListener("close", () => {
      this.projectId = null;
    });
  }

  async open(projectId, name) {
    this.projectId = String(projectId);
    setText(this.title, `Dependencies of ${name ?? `project #${projectId}`}`);
    this.body.replaceChildren(h("p", { class: "hint", text: "Loading…" }));
    if (!this.dialog.open) this.dialog.showModal();
    await this.refresh();
  }

  /** An event of `projectId` arrived: redraw if that project is on show. */
  changed(projectId) {
    if (this.projectId === String(projectId)) this.refreshSoon();
  }

  async refresh() {
    const id = this.projectId;
    if (!id) return;
    try {
      await renderDependencyTree(this.api, id, this.body, this.statusOf);
    } catch (error) {
      if (error instanceof AuthError) this.onAuth(error);
      this.body.replaceChildren(h("p", { class: "alert", role: "alert", text: error.message }));
    }
  }
}

/** The dependency tree of a project in `container`: roots are tasks that wait for nothing;
 * under each task, the tasks that wait for it. A task reached twice (a diamond) is listed
 * again as a reference, not expanded again. */
async function renderDependencyTree(api, projectId, container, statusOf) {
  const tasks = [];
  let after = null;
  let name = "";
  for (;;) {
    const data = await api.request(PROJECT_GRAPH, { id: projectId, first: 500, after });
    if (!data.project) throw new Error(`project ${projectId} no longer exists`);
    name = data.project.name;
    tasks.push(...data.project.tasks.nodes);
    if (!data.project.tasks.pageInfo.hasNextPage) break;
    after = data.project.tasks.pageInfo.endCursor;
  }
  const byId = new Map(tasks.map((task) => [task.id, task]));
  const dependents = new Map(tasks.map((task) => [task.id, []]));
  for (const task of tasks) {
    for (const dependency of task.dependencies) dependents.get(dependency.id)?.push(task.id);
  }
  const shown = new Set();
  const node = (id) => {
    const task = byId.get(id);
    const status = statusOf(id) ?? task.status;
    const label = h(
      "span",
      { class: "dep-task" },
      h("span", { class: "status-pill", dataset: { status }, text: status }),
      h("button", { type: "button", class: "link", dataset: { task: id }, text: `#${id} ${task.title}` }),
    );
    if (shown.has(id)) return h("li", { role: "treeitem", class: "dep-repeat" }, label, " (listed above)");
    shown.add(id);
    const children = dependents.get(id);
    const item = h("li", { role: "treeitem", "aria-expanded": children.length ? "true" : undefined }, label);
    if (children.length) item.append(h("ul", { role: "group" }, children.map(node)));
    return item;
  };
  const roots = tasks.filter((task) => task.dependencies.length === 0).map((task) => task.id);
  const tree = h("ul", { role: "tree", "aria-label": `Dependencies of ${name}` }, roots.map(node));
  const caption = h(
    "p",
    { class: "hint" },
    tasks.length
      ? `${tasks.length} tasks. Each task is listed under the tasks it waits for.`
      : "This project has no tasks yet.",
  );
  container.replaceChildren(caption, tree);
  return name;
}
