// The "New project" and "New task" dialogs and the API key prompt.
import { AuthError } from "./api.js";
import { h, splitList } from "./dom.js";
import { CREATE_PROJECT, CREATE_TASK } from "./queries.js";

function wireClose(dialog) {
  for (const button of dialog.querySelectorAll("[data-close]")) button.addEventListener("click", () => dialog.close());
}

function showError(form, error) {
  const alert = form.querySelector(".alert");
  alert.textContent = error ? (error.code ? `${error.message} (${error.code})` : error.message) : "";
}

/** Submit `form` through `action`; errors stay in the dialog, auth errors go to `onAuth`. */
function handleSubmit(form, action, onAuth) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const submit = form.querySelector("[type=submit]");
    submit.disabled = true;
    showError(form, null);
    try {
      await action(new FormData(form));
    } catch (error) {
      showError(form, error);
      if (error instanceof AuthError) onAuth(error);
    } finally {
      submit.disabled = false;
    }
  });
}

export function projectDialog(api, { onCreated, onAuth }) {
  const dialog = document.getElementById("project-dialog");
  const form = document.getElementById("project-form");
  wireClose(dialog);
  handleSubmit(
    form,
    async (data) => {
      const input = { name: data.get("name").trim() };
      const description = data.get("description").trim();
      if (description) input.description = description;
      const result = await api.request(CREATE_PROJECT, { input });
      form.reset();
      dialog.close();
      onCreated(result.createProject);
    },
    onAuth,
  );
  return {
    open() {
      showError(form, null);
      dialog.showModal();
    },
  };
}

export function taskDialog(api, { projects, tasksOf, selectedProject, onCreated, onAuth }) {
  const dialog = document.getElementById("task-dialog");
  const form = document.getElementById("task-form");
  const projectSelect = document.getElementById("task-project");
  const dependsSelect = document.getElementById("task-depends");
  wireClose(dialog);
  const fillDependencies = () => {
    const tasks = tasksOf(projectSelect.value).sort((a, b) => Number(b.id) - Number(a.id));
    dependsSelect.replaceChildren(
      ...tasks.map((task) => h("option", { value: task.id, text: `#${task.id} ${task.title} (${task.status})` })),
    );
  };
  projectSelect.addEventListener("change", fillDependencies);
  handleSubmit(
    form,
    async (data) => {
      const input = {
        projectId: data.get("projectId"),
        title: data.get("title").trim(),
        taskType: data.get("taskType").trim(),
        requiresReview: data.get("requiresReview") === "on",
      };
      const priority = data.get("priority");
      if (priority) input.priority = Number(priority);
      const description = data.get("description").trim();
      if (description) input.description = description;
      const tags = splitList(data.get("tags"));
      if (tags.length) input.tags = tags;
      const skills = splitList(data.get("requiredSkills"));
      if (skills.length) input.requiredSkills = skills;
      const dependsOn = data.getAll("dependsOn");
      if (dependsOn.length) input.dependsOn = dependsOn;
      const result = await api.request(CREATE_TASK, { input });
      form.reset();
      dialog.close();
      onCreated(result.createTask);
    },
    onAuth,
  );
  return {
    open() {
      const list = projects().sort((a, b) => Number(b.id) - Number(a.id));
      if (!list.length) {
        showError(form, new Error("Create a project first."));
      } else {
        showError(form, null);
      }
      const current = selectedProject() || projectSelect.value || list[0]?.id || "";
      projectSelect.replaceChildren(
        ...list.map((project) => h("option", { value: project.id, text: `${project.name} (#${project.id})` })),
      );
      projectSelect.value = current;
      fillDependencies();
      dialog.showModal();
      document.getElementById("task-title-input").focus();
    },
  };
}

/** The key prompt: `ask(error)` opens it once per failure, saying whether the key sent was
 * refused; submitting stores the key and calls `onKey`. */
export function keyDialog(api, { onKey }) {
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const error = document.getElementById("key-error");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    api.setCredential(key);
    input.value = "";
    dialog.close();
    onKey();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    api.setCredential(null);
    input.value = "";
    dialog.close();
    onKey();
  });
  return {
    ask(failure) {
      error.textContent =
        failure?.rejected
          ? `The key was not accepted: ${failure.message}. Check it and enter it again.`
          : failure
            ? "This service needs a key: it answered UNAUTHENTICATED."
            : "";
      if (!dialog.open) dialog.showModal();
      input.focus();
    },
    get isOpen() {
      return dialog.open;
    },
  };
}
