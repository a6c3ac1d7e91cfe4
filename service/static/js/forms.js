// Form helpers: the domain schedule picker, reading a form into API params, and showing API errors
// next to the field they name.

let uid = 0;

/**
 * Replace a `.generation-slot` with the fields both job forms share (prompt ... guidance), ids
 * `<prefix>-<field>`; `data-prompt` and `data-views` on the slot are the defaults.
 */
export function generationFields(slot) {
  const fragment = document.getElementById("generation-template").content.cloneNode(true);
  for (const input of fragment.querySelectorAll("[data-field]")) {
    input.id = `${slot.dataset.prefix}-${input.dataset.field}`;
    input.name = input.dataset.field;
    input.closest(".field").querySelector("label").htmlFor = input.id;
  }
  fragment.querySelector("[data-field=prompt]").value = slot.dataset.prompt;
  fragment.querySelector("[data-field=num_views]").value = slot.dataset.views;
  slot.replaceWith(fragment);
}

/** Fill a `.schedule-slot` with a schedule picker; returns {el, value(), describe(), set(schedule)}. */
export function schedulePicker(slot) {
  const prefix = `sched-${slot.dataset.schedule}-${++uid}`;
  const el = document.getElementById("schedule-template").content.firstElementChild.cloneNode(true);
  el.querySelector("legend").textContent = slot.dataset.legend;
  for (const radio of el.querySelectorAll("[data-role=mode]")) {
    radio.name = `${prefix}-mode`;
    radio.id = `${prefix}-mode-${radio.value}`;
    el.querySelector(`label[data-mode=${radio.value}]`).htmlFor = radio.id;
  }
  const split = el.querySelector("[data-role=split]");
  const out = el.querySelector("[data-role=split-out]");
  const blocks = el.querySelector("[data-role=blocks]");
  split.id = `${prefix}-fraction`;
  blocks.id = `${prefix}-blocks`;
  el.querySelector("label[data-for=split]").htmlFor = split.id;
  el.querySelector("label[data-for=blocks]").htmlFor = blocks.id;
  out.htmlFor = split.id;
  const errorEl = el.querySelector("[data-error-for=schedule]");
  errorEl.id = `${prefix}-error`;
  split.setAttribute("aria-describedby", errorEl.id);
  blocks.setAttribute("aria-describedby", errorEl.id);

  const mode = () => el.querySelector("[data-role=mode]:checked").value;
  const pickSplit = () => {
    el.querySelector("[data-role=mode][value=split]").checked = true;
    out.value = Number(split.value).toFixed(2);
    showMode();
  };
  // The split rows count only under "Step split": dimmed (and the value shown as unused) otherwise.
  const showMode = () => {
    const active = mode() === "split";
    for (const row of el.querySelectorAll(".split-row")) row.dataset.inactive = String(!active);
    out.value = active ? Number(split.value).toFixed(2) : "unused";
  };
  for (const radio of el.querySelectorAll("[data-role=mode]")) radio.addEventListener("change", showMode);
  // The slider and the block input stay usable: touching either picks the step split.
  split.addEventListener("input", pickSplit);
  blocks.addEventListener("input", pickSplit);
  const sync = showMode;
  slot.replaceChildren(el);
  sync();

  return {
    el,
    /** The API's `schedule` object, or undefined for the model's default. */
    value() {
      switch (mode()) {
        case "split": {
          const s = { split: Number(split.value) };
          if (blocks.value !== "") s.blocks = Number(blocks.value);
          return s;
        }
        case "real":
        case "synthetic":
          return { domain: mode() };
        default:
          return undefined;
      }
    },
    set(schedule) {
      let m = "default";
      if (schedule?.domain) m = schedule.domain;
      else if (schedule?.split != null) {
        m = "split";
        split.value = schedule.split;
        blocks.value = schedule.blocks ?? "";
      }
      el.querySelector(`[data-role=mode][value=${m}]`).checked = true;
      sync();
    },
  };
}

/** A schedule as a person reads it. */
export function describeSchedule(s) {
  if (!s) return "model default";
  if (s.domain) return `all ${s.domain}`;
  if (s.split != null) return `split ${s.split}${s.blocks != null ? `, blocks ${s.blocks}` : ""}`;
  return JSON.stringify(s);
}

/** The API params of a form: text fields as strings, numbers as numbers, empty optional ones left out. */
export function readParams(form) {
  const params = {};
  for (const input of form.querySelectorAll("[data-field]:not([data-role])")) {
    if (input.type === "file" || input.type === "checkbox") continue;
    const name = input.dataset.field;
    const raw = input.value;
    if (input.type === "number" || input.tagName === "SELECT") {
      if (raw.trim() === "") continue;
      // Sent as typed: the API, not the page, decides what is valid and says so.
      const num = Number(raw);
      params[name] = Number.isNaN(num) ? raw : num;
    } else if (name === "prompt" || raw !== "") {
      params[name] = raw;
    }
  }
  return params;
}

export function clearErrors(form, ...scopes) {
  for (const scope of [form, ...scopes]) {
    for (const el of scope.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of scope.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    const general = scope.querySelector(".form-error");
    if (general) general.textContent = "";
  }
}

/**
 * Show an ApiError on a form: each 422 field message next to its field (the longest matching field path,
 * e.g. `schedule.split` then `schedule`), the rest in the form's general error line.
 * `scheduleScope` is where `schedule.*` messages go (the compare mode's second picker for its job).
 */
export function showError(form, error, scheduleScope = form) {
  const general = [];
  const fields = error.fieldMessages();
  for (const { field, message } of fields) {
    const target = field && fieldTarget(field.startsWith("schedule") ? scheduleScope : form, field);
    if (target) {
      target.error.textContent += (target.error.textContent ? " " : "") + `${field}: ${message}`;
      target.input?.setAttribute("aria-invalid", "true");
    } else {
      general.push(field ? `${field}: ${message}` : message);
    }
  }
  if (!fields.length) {
    // Not a field error: 413 belongs to the upload, 401 to the key field; the rest is for the form.
    const target = error.status === 413 ? fieldTarget(form, "mesh") : null;
    if (target) target.error.textContent = error.describe();
    else general.push(error.describe());
    if (error.status === 401) {
      document.getElementById("api-key-error").textContent = error.describe();
      document.getElementById("api-key").setAttribute("aria-invalid", "true");
    }
  }
  const generalEl = form.querySelector(".form-error");
  generalEl.textContent = general.join(" ");
  const first = form.querySelector("[aria-invalid=true]") || scheduleScope.querySelector("[aria-invalid=true]");
  first?.focus();
}

function fieldTarget(scope, field) {
  const parts = field.split(".");
  for (let n = parts.length; n > 0; n--) {
    const name = parts.slice(0, n).join(".");
    const error = scope.querySelector(`[data-error-for="${name}"]`);
    if (error) {
      const input = scope.querySelector(`[data-field="${field}"]`) || scope.querySelector(`[data-field="${name}"]`);
      if (input && error.id) input.setAttribute("aria-describedby", error.id);
      return { error, input };
    }
  }
  return null;
}

/** Give every `[data-error-for]` of a form an id and point its input at it (screen readers read both). */
export function linkErrorIds(form) {
  for (const error of form.querySelectorAll(".field [data-error-for]")) {
    const field = error.dataset.errorFor;
    if (!field) continue;
    error.id = `${form.id}-${field}-error`;
    error.setAttribute("aria-live", "polite");
    form.querySelector(`[data-field="${field}"]`)?.setAttribute("aria-describedby", error.id);
  }
}
