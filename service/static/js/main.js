// The playground page: forms -> API jobs -> live progress -> results (view grid, compare, 3D viewer).

import {
  ApiError,
  apiKey,
  artifactBlob,
  call,
  cancelJob,
  followJob,
  getJob,
  setApiKey,
  submitMultiview,
  submitTexture,
} from "./api.js";
import {
  clearErrors,
  describeSchedule,
  generationFields,
  linkErrorIds,
  readParams,
  schedulePicker,
  showError,
} from "./forms.js";
import { clearJobs, refreshJobs, rememberJob, renderJobs, updateJob } from "./jobs.js";

const TERMINAL = ["succeeded", "failed", "canceled"];
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

// Never a blank page: anything unexpected is said in a banner.
function pageError(message) {
  const banner = $("#page-error");
  banner.textContent = `Something went wrong in the page: ${message}`;
  banner.hidden = false;
}
window.addEventListener("error", (e) => pageError(e.message));
window.addEventListener("unhandledrejection", (e) => pageError(e.reason?.message || String(e.reason)));

// ---------------------------------------------------------------------------------------------------------
// Service status and the API key

async function pollStatus() {
  const pill = $("#service-status");
  let ready = false;
  try {
    const response = await fetch("readyz", { cache: "no-store" });
    const body = await response.json();
    ready = Boolean(body.ready);
    if (ready) pill.textContent = `ready (${body.mode} mode)`;
    else if (!body.broker) pill.textContent = "not ready: the job broker is unreachable";
    else if (body.warming) pill.textContent = "loading the model: jobs submitted now wait in the queue and run once it is loaded";
    else pill.textContent = "not ready: no worker has a loaded model yet";
    showModel(body.models || []);
  } catch {
    pill.textContent = "the service cannot be reached";
  }
  pill.dataset.ready = String(ready);
  setTimeout(pollStatus, ready ? 30000 : 3000);
}

/** What the page talks to: the model's name and size, and a word on the shipped toy model. */
function showModel(models) {
  const note = $("#model-note");
  if (!models.length) return;
  const names = models.map((m) => `${m.name} (${m.resolution} px views)`).join(", ");
  const toy = models.some((m) => m.name === "realiz3d-default-trained" || (m.resolution && m.resolution <= 64));
  note.textContent =
    `Model: ${names}.` +
    (toy
      ? " This is the small model shipped to try the service, trained here on a CPU: it draws blobby 32×32 views" +
        " of simple shapes, mostly in the prompt's colour, with checkerboard noise. Rough results are expected;" +
        " a real model folder gives real images (docs/bring-your-own-model.md)."
      : "");
  note.dataset.toy = String(toy);
  note.hidden = false;
}

/** Example chips fill the prompt; a sample chip also loads that sample mesh into the file input. */
function setupExamples() {
  for (const chip of document.querySelectorAll("[data-example]")) {
    chip.addEventListener("click", async () => {
      const form = chip.closest("form");
      const prompt = $("[data-field=prompt]", form);
      prompt.value = chip.dataset.example;
      if (chip.dataset.sample) await loadSample(chip.dataset.sample);
      prompt.focus();
    });
  }
}

async function loadSample(name) {
  const note = $("#tx-sample-note");
  const response = await fetch(`static/samples/${name}.glb`);
  if (!response.ok) {
    note.textContent = `The sample ${name}.glb could not be loaded (HTTP ${response.status}).`;
    return;
  }
  const file = new File([await response.blob()], `${name}.glb`, { type: "model/gltf-binary" });
  const transfer = new DataTransfer();
  transfer.items.add(file);
  $("#tx-mesh").files = transfer.files;
  note.textContent = `${name}.glb loaded (the same as realiz3d sample ${name}.glb).`;
}

function setupKey() {
  const input = $("#api-key");
  input.value = apiKey();
  const clear = () => {
    $("#api-key-error").textContent = "";
    input.removeAttribute("aria-invalid");
  };
  input.addEventListener("input", () => {
    setApiKey(input.value.trim());
    clear();
  });
  $("#api-key-forget").addEventListener("click", () => {
    input.value = "";
    setApiKey("");
    clear();
  });
  $("#key-form").addEventListener("submit", (e) => e.preventDefault());
}

// ---------------------------------------------------------------------------------------------------------
// Artifacts

/** Object URLs of a results area, revoked when the area is reused. */
const objectUrls = new WeakMap();
/** The event streams of a results area's jobs, closed when the area is reused (browsers allow ~6 per host). */
const streams = new WeakMap();

async function artifactUrl(area, artifact) {
  const url = URL.createObjectURL(await artifactBlob(artifact));
  if (!objectUrls.has(area)) objectUrls.set(area, []);
  objectUrls.get(area).push(url);
  return url;
}

function resetArea(area) {
  for (const controller of streams.get(area) || []) controller.abort();
  streams.delete(area);
  for (const url of objectUrls.get(area) || []) URL.revokeObjectURL(url);
  objectUrls.delete(area);
  area.replaceChildren();
}

function byName(job, name) {
  return job.artifacts.find((a) => a.name === name);
}

function views(job, prefix = "") {
  const re = new RegExp(`^${prefix}view_(\\d+)\\.png$`);
  return job.artifacts.filter((a) => re.test(a.name)).sort((a, b) => a.name.localeCompare(b.name));
}

async function downloadLinks(area, job, names) {
  const list = el("ul", { class: "downloads" });
  for (const name of names) {
    const artifact = byName(job, name);
    if (!artifact) continue;
    const url = await artifactUrl(area, artifact);
    const base = name.split("/").pop();
    list.append(el("li", {}, el("a", { href: url, download: base, class: "button secondary" }, `Download ${name}`)));
  }
  return list;
}

async function artifactJson(job, name) {
  const artifact = byName(job, name);
  return artifact ? (await call(artifact.url)).json() : null;
}

async function viewGrid(area, job, prefix, cameras) {
  const grid = el("div", { class: "view-grid" });
  for (const artifact of views(job, prefix)) {
    const i = Number(/(\d+)\.png$/.exec(artifact.name)[1]);
    const cam = cameras?.cameras?.[i];
    const where = cam ? `azimuth ${cam.azimuth_deg.toFixed(0)}°, elevation ${cam.elevation_deg.toFixed(0)}°` : "";
    const url = await artifactUrl(area, artifact);
    const base = artifact.name.split("/").pop();
    grid.append(
      el(
        "figure",
        { class: "view" },
        el("img", { src: url, alt: `view ${i}${where ? `: ${where}` : ""}`, width: 256, height: 256 }),
        el(
          "figcaption",
          {},
          `view ${i}${where ? ` · ${where}` : ""} `,
          el("a", { href: url, download: base }, "download"),
        ),
      ),
    );
  }
  return grid;
}

function camerasTable(cameras) {
  if (!cameras?.cameras?.length) return null;
  const rows = cameras.cameras.map((c) =>
    el(
      "tr",
      {},
      el("th", { scope: "row" }, String(c.index)),
      ...[c.azimuth_deg, c.elevation_deg, c.radius, c.fov_deg].map((v) => el("td", {}, v.toFixed(1))),
    ),
  );
  const head = el("tr", {}, ...["view", "azimuth °", "elevation °", "radius", "fov °"].map((h) => el("th", { scope: "col" }, h)));
  return el(
    "details",
    { class: "cameras" },
    el("summary", {}, "Cameras"),
    el("p", { class: "hint" }, cameras.convention || ""),
    el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))),
  );
}

async function showMultiview(area, job) {
  const [cameras, meta] = await Promise.all([artifactJson(job, "cameras.json"), artifactJson(job, "meta.json")]);
  const seed = meta?.seed != null ? `seed ${meta.seed}` : "";
  // step caching as the job ran it (a backend without it runs every step whole: 1)
  const cache = meta?.cache_interval > 1 ? `cache interval ${meta.cache_interval}` : "";
  area.append(
    el("p", { class: "result-meta" }, [seed, cameras ? `${cameras.resolution} px` : "", cache].filter(Boolean).join(" · ")),
    await viewGrid(area, job, "", cameras),
    await downloadLinks(area, job, ["grid.png", "cameras.json", "meta.json"]),
    camerasTable(cameras),
  );
}

/** Where the texture's colour came from: meta.json's surface shares (sum 1) and its warnings. */
function surfaceShares(meta) {
  const s = meta?.surface;
  if (!s) return null;
  const pct = (x) => `${(100 * (x ?? 0)).toFixed(1)}%`;
  const planned = (meta.views_used ?? meta.num_views) - meta.num_views;
  return el(
    "div",
    { class: "surface-shares" },
    el(
      "p",
      { class: "result-meta", "data-testid": "surface-shares" },
      `surface: ${pct(s.from_views)} from the ${meta.num_views} views · ${pct(s.inpainted)} inpainted from ` +
        `${planned} planned view${planned === 1 ? "" : "s"} · ${pct(s.filled)} filled (no view saw it)`,
    ),
    ...(meta.warnings || []).map((w) => el("p", { class: "hint" }, `warning: ${w}`)),
  );
}

async function showTexture(area, job) {
  const viewerBox = el("div", { class: "viewer", "data-state": "loading" }, "Loading the 3D viewer…");
  const atlas = byName(job, "texture.png");
  const [cameras, meta] = await Promise.all([artifactJson(job, "cameras.json"), artifactJson(job, "meta.json")]);
  const atlasFigure = atlas
    ? el(
        "figure",
        { class: "atlas" },
        el("img", { src: await artifactUrl(area, atlas), alt: "the baked texture atlas", width: 256, height: 256 }),
        el("figcaption", {}, "texture atlas (texture.png)"),
      )
    : null;
  area.append(
    el("div", { class: "texture-top" }, viewerBox, atlasFigure),
    surfaceShares(meta) ?? "",
    el("div", { class: "viewer-help hint" }, "Drag to orbit, wheel to zoom, right-drag to pan; with the viewer focused: arrows orbit, + and − zoom, 0 resets."),
    await downloadLinks(area, job, ["textured.glb", "textured.obj", "textured.mtl", "texture.png", "cameras.json", "meta.json"]),
    el("h4", {}, "Generated views"),
    await viewGrid(area, job, "views/", cameras),
    camerasTable(cameras),
  );
  const glb = byName(job, "textured.glb");
  if (!glb) {
    viewerBox.textContent = "This job has no textured.glb.";
    viewerBox.dataset.state = "error";
    return;
  }
  const { showGlb, webglAvailable } = await import("./viewer.js");
  if (!webglAvailable()) {
    viewerBox.textContent = "This browser has no WebGL, so the model cannot be shown here: download textured.glb.";
    viewerBox.dataset.state = "error";
    return;
  }
  try {
    const buffer = await (await artifactBlob(glb)).arrayBuffer();
    await showGlb(viewerBox, buffer, "The textured mesh (textured.glb)");
    viewerBox.dataset.state = "ready";
  } catch (e) {
    viewerBox.textContent = `The 3D viewer could not show textured.glb: ${e.message || e}`;
    viewerBox.dataset.state = "error";
  }
}

// ---------------------------------------------------------------------------------------------------------
// One job's panel: status, progress (SSE), cancel, then its results

function jobPanel(area, container, job, title) {
  const status = el(
    "span",
    { class: `status status-${job.status}`, dataset: { role: "status" }, "aria-live": "polite" },
    job.status,
  );
  const progress = el("progress", { max: 1, value: 0, "aria-label": `progress of ${title}` });
  const steps = el("span", { class: "steps", dataset: { role: "steps" } }, "");
  const cancel = el("button", { type: "button", class: "secondary", dataset: { role: "cancel" } }, "Cancel");
  const message = el("p", { class: "job-message", role: "status" });
  const body = el("div", { class: "job-body" });
  const panel = el(
    "article",
    { class: "job", dataset: { jobId: job.id, kind: job.kind } },
    el(
      "h3",
      {},
      title,
      " ",
      el("a", { href: `#job=${encodeURIComponent(job.id)}`, class: "job-id", title: "link to this job" }, job.id.slice(0, 10)),
    ),
    el("div", { class: "job-progress" }, status, progress, steps, cancel),
    message,
    body,
  );
  container.append(panel);

  // `p`: the job's progress ({step, total} and, for texture jobs, {stage, stage_fraction}).
  const update = (s, p = {}) => {
    const { step = 0, total = 0, stage = null, stage_fraction: fraction = null } = p;
    status.textContent = s;
    status.className = `status status-${s}`;
    panel.dataset.status = s;
    // A texture job's stage (load, unwrap, render, bake, fill) with how far into it; "generate" is the steps.
    const stageText = stage && stage !== "generate" ? `${stage} ${Math.round(100 * (fraction || 0))}%` : "";
    const parts = [stageText, total ? `step ${step} / ${total}` : ""].filter(Boolean);
    if (parts.length) steps.textContent = parts.join(" · ");
    if (total && step > 0) {
      progress.max = total;
      progress.value = step;
    } else if (stage) {
      progress.max = 1;
      progress.value = fraction || 0;
    }
    cancel.hidden = TERMINAL.includes(s);
  };
  update(job.status, job.progress || {});

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await cancelJob(job.id);
      // The event stream may have said "canceled" before this answer came: the final word is its.
      if (!TERMINAL.includes(panel.dataset.status)) message.textContent = "Cancel requested: it stops at its next step.";
    } catch (e) {
      message.textContent = e instanceof ApiError ? e.describe() : String(e);
      cancel.disabled = false;
    }
  });

  const finish = async (final) => {
    update(final.status, final.progress);
    updateJob(final);
    if (final.status === "succeeded") {
      message.textContent = "";
      await (final.kind === "texture" ? showTexture : showMultiview)(body, final);
      panel.dataset.ready = "true";
    } else if (final.status === "failed") {
      message.textContent = `Failed: ${final.error?.message || "unknown error"} (${final.error?.code || "error"})`;
    } else if (final.status === "canceled") {
      message.textContent = final.progress.total
        ? `Canceled at step ${final.progress.step} of ${final.progress.total}.`
        : "Canceled before it started.";
    }
  };

  const controller = new AbortController();
  if (!streams.has(area)) streams.set(area, []);
  streams.get(area).push(controller);
  (async () => {
    try {
      const final = await followJob(
        job.id,
        (type, data) => {
          if (type === "status") {
            update(data.status, data.progress);
            updateJob(data);
          } else if (type === "progress") {
            update(data.status, data);
          }
        },
        controller.signal,
      );
      await finish(final);
    } catch (e) {
      if (controller.signal.aborted) return; // the panel was replaced
      message.textContent = e instanceof ApiError ? e.describe() : `Error: ${e.message || e}`;
      panel.dataset.status = "error";
    }
  })();
  return panel;
}

// ---------------------------------------------------------------------------------------------------------
// Forms

/** After a 429/503 with Retry-After, the submit button says when to try again. */
function holdButton(button, error) {
  if (!(error instanceof ApiError) || error.retryAfter == null) return;
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  let left = Math.ceil(error.retryAfter);
  button.disabled = true;
  const tick = () => {
    if (left <= 0) {
      button.disabled = false;
      button.textContent = label;
      return;
    }
    button.textContent = `${label} (retry in ${left} s)`;
    left -= 1;
    setTimeout(tick, 1000);
  };
  tick();
}

function shortPrompt(p) {
  return p.length > 40 ? `${p.slice(0, 39)}…` : p;
}

function setupMultiview() {
  const form = $("#mv-form");
  const results = $("#mv-results");
  generationFields($(".generation-slot", form));
  linkErrorIds(form);
  const pickerA = schedulePicker($(".schedule-slot[data-schedule=a]", form));
  const slotB = $(".schedule-slot[data-schedule=b]", form);
  const pickerB = schedulePicker(slotB);
  pickerB.set({ domain: "real" });
  const compare = $("#mv-compare");
  compare.addEventListener("change", () => {
    slotB.hidden = !compare.checked;
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("#mv-submit");
    clearErrors(form);
    const params = readParams(form);
    const schedules = [pickerA.value()];
    if (compare.checked) {
      schedules.push(pickerB.value());
      // One seed for both, so that only the schedule differs.
      if (params.seed == null) params.seed = Math.floor(Math.random() * 2 ** 31);
    }
    button.disabled = true;
    const accepted = [];
    try {
      for (const [i, schedule] of schedules.entries()) {
        const body = schedule ? { ...params, schedule } : { ...params };
        const scope = i === 0 ? pickerA.el : pickerB.el;
        try {
          accepted.push({ job: await submitMultiview(body), schedule });
        } catch (e) {
          if (!(e instanceof ApiError)) throw e;
          showError(form, e, scope);
          holdButton(button, e);
          break;
        }
      }
    } finally {
      if (!button.textContent.includes("retry in")) button.disabled = false;
    }
    if (!accepted.length) return;
    resetArea(results);
    const row = el("div", { class: accepted.length > 1 ? "compare" : "single" });
    results.append(row);
    if (accepted.length > 1) {
      row.before(el("p", { class: "result-meta" }, `Same prompt and seed ${params.seed}; only the domain schedule differs.`));
    }
    for (const { job, schedule } of accepted) {
      const label = `${shortPrompt(params.prompt ?? "")} · ${describeSchedule(schedule)}`;
      rememberJob({ id: job.id, kind: job.kind, label });
      jobPanel(results, row, job, describeSchedule(schedule));
    }
    showNewJob(results);
  });
}

function setupTexture() {
  const form = $("#tx-form");
  const results = $("#tx-results");
  generationFields($(".generation-slot", form));
  linkErrorIds(form);
  const picker = schedulePicker($(".schedule-slot[data-schedule=t]", form));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("#tx-submit");
    clearErrors(form);
    const params = readParams(form);
    const schedule = picker.value();
    if (schedule) params.schedule = schedule;
    const file = $("#tx-mesh").files[0] || null;
    button.disabled = true;
    let job;
    try {
      job = await submitTexture(file, params);
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      showError(form, e, picker.el);
      holdButton(button, e);
      return;
    } finally {
      if (!button.textContent.includes("retry in")) button.disabled = false;
    }
    resetArea(results);
    rememberJob({ id: job.id, kind: job.kind, label: `${file?.name ?? "mesh"} · ${shortPrompt(params.prompt ?? "")}` });
    jobPanel(results, results, job, `${file?.name ?? "mesh"} · ${describeSchedule(schedule)}`);
    showNewJob(results);
  });
}

/** The new job's panel into view (on a phone it is far below the form's submit button). */
function showNewJob(results) {
  const panel = results.querySelector("article.job");
  if (panel && panel.getBoundingClientRect().top > window.innerHeight * 0.6) {
    panel.scrollIntoView({ block: "start", behavior: "smooth" });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Links back to a job: #job=ID opens it in its section

async function openFromHash() {
  const m = /^#job=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (!m) return;
  const id = decodeURIComponent(m[1]);
  let job;
  try {
    job = await getJob(id);
  } catch (e) {
    const banner = $("#page-error");
    banner.textContent =
      e instanceof ApiError && e.status === 404 ? `Job ${id} does not exist any more (jobs expire).` : `Job ${id}: ${e.describe ? e.describe() : e}`;
    banner.hidden = false;
    if (e instanceof ApiError && e.status === 404) updateJob({ id, status: "expired" });
    return;
  }
  const section = job.kind === "texture" ? "#tx-results" : "#mv-results";
  const area = $(section);
  resetArea(area);
  jobPanel(area, area, job, `job ${id.slice(0, 10)}`);
  area.closest("section").scrollIntoView();
}

function setupJobs() {
  renderJobs();
  refreshJobs();
  $("#jobs-refresh").addEventListener("click", refreshJobs);
  $("#jobs-clear").addEventListener("click", clearJobs);
  // A link to the job already in the address bar fires no hashchange: open it all the same.
  $("#jobs-table").addEventListener("click", (e) => {
    const link = e.target.closest("a");
    if (link && link.getAttribute("href") === location.hash) openFromHash();
  });
  window.addEventListener("hashchange", openFromHash);
  openFromHash();
}

setupKey();
setupMultiview();
setupTexture();
setupExamples();
setupJobs();
pollStatus();
document.body.dataset.ready = "true";
