// The board's filters: project, tag, assignee and text. `onChange(filter)` runs on every
// change with { project, tag, assignee, text } ("" means any; assignee "-" means nobody).
import { debounce, h } from "./dom.js";

function fillSelect(select, values) {
  const current = select.value;
  const fixed = select.querySelectorAll("option[data-fixed]");
  select.replaceChildren(...fixed, ...values.map(([value, text]) => h("option", { value, text })));
  select.value = [...select.options].some((option) => option.value === current) ? current : "";
}

export class Filters {
  constructor({ onChange }) {
    this.form = document.getElementById("filters");
    this.project = document.getElementById("filter-project");
    this.tag = document.getElementById("filter-tag");
    this.assignee = document.getElementById("filter-assignee");
    this.text = document.getElementById("filter-text");
    const changed = () => onChange(this.value());
    for (const select of [this.project, this.tag, this.assignee]) select.addEventListener("change", changed);
    this.text.addEventListener("input", debounce(changed, 120));
    this.form.addEventListener("reset", () => setTimeout(changed));
    this.form.addEventListener("submit", (event) => event.preventDefault());
    this.changed = changed;
  }

  value() {
    return {
      project: this.project.value,
      tag: this.tag.value,
      assignee: this.assignee.value,
      text: this.text.value.trim().toLowerCase(),
    };
  }

  /** Offer these choices, keeping the current ones that still exist. */
  setOptions({ projects, tags, assignees }) {
    fillSelect(this.project, projects);
    fillSelect(this.tag, tags.map((tag) => [tag, tag]));
    fillSelect(this.assignee, assignees.map((name) => [name, name]));
  }

  selectProject(id) {
    this.project.value = id;
    this.changed();
  }

  focusText() {
    this.text.focus();
  }
}
