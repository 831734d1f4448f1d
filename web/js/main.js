// The dashboard: loads a snapshot over HTTP, then stays live through subscriptions (see
// live.js). Changes are queued per task and applied once per animation frame, so a burst
// of events patches each card once.
import { AgentsPanel } from "./agents.js";
import { Api, AuthError } from "./api.js";
import { Board, STATUSES } from "./board.js";
import { debounce, setText } from "./dom.js";
import { Drawer } from "./drawer.js";
import { Feed } from "./feed.js";
import { Filters } from "./filters.js";
import { keyDialog, projectDialog, taskDialog } from "./forms.js";
import { Live } from "./live.js";
import { DependencyDialog, ProjectsPanel } from "./projects.js";
import { AGENTS, HEAD, PROJECTS, TASKS_PAGE } from "./queries.js";

const PAGE_SIZE = 500; // the server's default MAX_PAGE_SIZE
const MAX_TASKS = 5000; // beyond this the board shows the first ones and says so
const FEED_START = 40;
// Events after which an agent's stats (completed, failed, success rate) have changed.
const AGENT_STATS_EVENTS = new Set(["CLAIMED", "SUBMITTED", "APPROVED", "REJECTED", "FAILED", "TIMED_OUT", "LEASE_EXPIRED"]);
const STATE_TEXT = {
  connecting: "Connecting…",
  "catching-up": "Catching up…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

const $ = (id) => document.getElementById(id);
const api = new Api();
const board = new Board($("board"), { onOpen: openTask });
const agents = new AgentsPanel($("agents"), $("agents-count"), { onOpenTask: openTask });
const projects = new ProjectsPanel($("projects"), {
  onSelect: (id) => filters.selectProject(id),
  onGraph: (id) => dependencies.open(id, projects.get(id)?.name),
});
const dependencies = new DependencyDialog(api, {
  statusOf: (id) => board.get(id)?.status,
  onOpenTask: openTask,
  onAuth: askKey,
});
const filters = new Filters({ onChange: applyFilter });
const feed = new Feed($("feed"), $("feed-pause"), { titleOf: (id) => board.get(id)?.title });
const drawer = new Drawer($("drawer"), api, { onChanged: applyTask, onAuth: askKey, onOpenTask: openTask });
const keys = keyDialog(api, { onKey: () => load() });
const live = new Live(api, {
  event: onEvent,
  presence: onPresence,
  stats: showStats,
  state: showConnection,
  // Back after a loss: projects and agents may have changed unseen (an agent registered or
  // hard-unregistered meanwhile writes no task event).
  resync: () => {
    refreshProjects();
    refreshAgents();
  },
  authFailure: askKey,
});
const newProject = projectDialog(api, {
  onCreated: (project) => {
    projects.upsert(project);
    refreshFilterOptions();
    filters.selectProject(project.id);
  },
  onAuth: askKey,
});
const newTask = taskDialog(api, {
  projects: () => projects.projects(),
  tasksOf: (projectId) => board.tasks().filter((task) => task.project.id === projectId),
  selectedProject: () => board.filter.project,
  onCreated: (task) => {
    applyTask(task);
    openTask(task.id);
  },
  onAuth: askKey,
});

// Counters for whoever looks (the browser tests, a curious operator in the console): events
// applied, frames that applied them, and the milliseconds those frames spent on the DOM.
const metrics = { events: 0, flushes: 0, applyMs: 0, lastEventId: 0 };
window.dashboardMetrics = metrics;

let capped = null; // { loaded, total } when the board holds only part of the tasks
let loadAttempt = 0;
let loadTimer = null;
const tags = new Set();
const pending = new Map(); // task id -> card (null: remove), applied on the next frame
const arrived = []; // events for the feed, applied on the next frame
let flushQueued = false;

// -- loading ------------------------------------------------------------------------------

async function loadTasks() {
  const tasks = [];
  let total = 0;
  // Unfinished work first, so a long history of finished tasks cannot crowd it out.
  for (const status of [STATUSES.slice(0, 4), STATUSES.slice(4)]) {
    let after = null;
    for (;;) {
      const first = Math.min(PAGE_SIZE, MAX_TASKS - tasks.length);
      if (first <= 0) break;
      const data = await api.request(TASKS_PAGE, { filter: { status }, first, after });
      const page = data.tasks;
      if (after === null) total += page.totalCount;
      tasks.push(...page.nodes);
      if (!page.pageInfo.hasNextPage) break;
      after = page.pageInfo.endCursor;
    }
  }
  capped = tasks.length < total ? { loaded: tasks.length, total } : null;
  return tasks;
}

/** Load everything over HTTP, render it, then go live from the newest event seen. */
async function load() {
  clearTimeout(loadTimer);
  live.stop();
  showConnection("connecting");
  try {
    const [head, info] = await Promise.all([api.request(HEAD, { first: FEED_START }), api.info()]);
    setText($("version"), info.version ? `v${info.version}` : "");
    agents.setHeartbeatTimeout(info.heartbeatTimeoutSeconds);
    const [projectData, agentData, tasks] = await Promise.all([api.request(PROJECTS), api.request(AGENTS), loadTasks()]);
    projects.setProjects(projectData.projects);
    agents.setAgents(agentData.agents);
    pending.clear(); // older than this snapshot
    arrived.length = 0;
    board.setTasks(tasks);
    agents.setTasks(tasks);
    for (const task of tasks) for (const tag of task.tags) tags.add(tag);
    feed.reset(head.dashboardStats.recentEvents);
    showStats(head.dashboardStats);
    refreshFilterOptions();
    showSummary();
    document.body.dataset.loaded = "true";
    performance.mark("dashboard:first-render");
    loadAttempt = 0;
    live.start(head.dashboardStats.recentEvents[0]?.id ?? 0);
  } catch (error) {
    if (error instanceof AuthError) return askKey(error);
    showConnection("offline", error.message);
    // Not reachable yet (server starting, network down): try again, backing off to 10 s.
    loadAttempt += 1;
    loadTimer = setTimeout(load, Math.min(10_000, 500 * 2 ** loadAttempt));
  }
}

function askKey(error) {
  live.stop();
  showConnection("offline", "needs an API key");
  keys.ask(error);
}

// -- live updates -------------------------------------------------------------------------

function onEvent(event) {
  metrics.events += 1;
  metrics.lastEventId = Number(event.id);
  if (event.task) event.task.project = { id: event.projectId };
  arrived.push(event);
  if (event.actor) agents.sawActivity(event.actor, event.createdAt);
  const before = pending.has(event.taskId) ? pending.get(event.taskId) : board.get(event.taskId);
  queueTask(event.taskId, event.task);
  if (!projects.has(event.projectId) || event.toStatus || event.type === "CREATED" || event.type === "DELETED") {
    refreshProjects();
  }
  if (AGENT_STATS_EVENTS.has(event.type) && (before?.assignee || event.task?.assignee)) refreshAgents();
  if (drawer.openId === event.taskId) refreshDrawer();
  dependencies.changed(event.projectId);
}

function onPresence(presence) {
  agents.upsert({ ...presence.agent, status: presence.status });
  refreshFilterOptionsSoon();
}

function applyTask(task) {
  if (task?.id) queueTask(task.id, task);
}

function queueTask(id, task) {
  pending.set(String(id), task ?? null);
  queueFlush();
}

function queueFlush() {
  if (flushQueued) return;
  flushQueued = true;
  // Animation frames do not run in a hidden tab; a timer still applies changes there.
  if (document.hidden) setTimeout(flush, 100);
  else requestAnimationFrame(flush);
}

function flush() {
  const started = performance.now();
  flushQueued = false;
  let newTags = false;
  for (const [id, task] of pending) {
    const before = board.get(id) ?? null;
    if (task) board.upsert(task);
    else board.remove(id);
    agents.taskChanged(before, task);
    for (const tag of task?.tags ?? []) {
      if (!tags.has(tag)) {
        tags.add(tag);
        newTags = true;
      }
    }
  }
  pending.clear();
  if (arrived.length) feed.add(arrived.splice(0));
  board.refreshCounts();
  showSummary();
  if (newTags) refreshFilterOptions();
  metrics.flushes += 1;
  metrics.applyMs += performance.now() - started;
}

const refreshProjects = debounce(async () => {
  try {
    projects.setProjects((await api.request(PROJECTS)).projects);
    refreshFilterOptions();
  } catch (error) {
    if (error instanceof AuthError) askKey(error);
  }
}, 500);

const refreshAgents = debounce(async () => {
  try {
    agents.setAgents((await api.request(AGENTS)).agents);
    refreshFilterOptions();
  } catch (error) {
    if (error instanceof AuthError) askKey(error);
  }
}, 1000);

const refreshDrawer = debounce(() => drawer.refresh(), 200);

// -- header -------------------------------------------------------------------------------

function showStats(stats) {
  for (const el of document.querySelectorAll("[data-count]")) {
    const [group, key] = el.dataset.count.split(".");
    const value = stats[group]?.[key];
    if (value !== undefined) setText(el, String(value));
  }
}

function showConnection(state, detail = "") {
  const el = $("connection");
  el.dataset.state = state;
  setText(el, STATE_TEXT[state] ?? state);
  el.title = detail || STATE_TEXT[state] || state;
  document.body.dataset.connection = state;
}

function showSummary() {
  const shown = board.tasks().filter((task) => board.matches(task)).length;
  const total = board.cards.size;
  let text = shown === total ? `${total} tasks` : `${shown} of ${total} tasks`;
  if (capped) text += ` (the first ${capped.loaded} of ${capped.total} are on the board)`;
  setText($("board-summary"), text);
}

// -- filters ------------------------------------------------------------------------------

function applyFilter(filter) {
  board.setFilter(filter);
  projects.select(filter.project);
  showSummary();
}

function refreshFilterOptions() {
  filters.setOptions({
    projects: projects
      .projects()
      .sort((a, b) => Number(b.id) - Number(a.id))
      .map((project) => [project.id, project.name]),
    tags: [...tags].sort(),
    assignees: [...agents.rows.keys()].sort(),
  });
}

const refreshFilterOptionsSoon = debounce(refreshFilterOptions, 200);

// -- drawer -------------------------------------------------------------------------------

function openTask(id) {
  drawer.open(id);
}

// -- wiring -------------------------------------------------------------------------------

$("new-project").addEventListener("click", () => newProject.open());
$("new-task").addEventListener("click", () => newTask.open());
$("key-button").addEventListener("click", () => keys.ask(null));
$("feed").addEventListener("click", (event) => {
  const link = event.target.closest("[data-task]");
  if (link) openTask(link.dataset.task);
});
document.addEventListener("keydown", (event) => {
  const typing = event.target.closest?.("input, textarea, select, [contenteditable]");
  if (event.key === "/" && !typing) {
    event.preventDefault();
    filters.focusText();
  } else if (event.key === "Escape" && !$("drawer").hidden && !document.querySelector("dialog[open]")) {
    drawer.close();
  }
});
setInterval(() => agents.tick(), 1000);

load();
