// This browser's recent jobs: ids kept in localStorage (never fetched from the server, which has no
// "list jobs" route), their status and timings read with GET /v1/jobs/{id} under this browser's key.

import { ApiError, getJob } from "./api.js";

const STORAGE = "realiz3d.jobs";
const MAX_JOBS = 50;

export function recentJobs() {
  try {
    const jobs = JSON.parse(localStorage.getItem(STORAGE) || "[]");
    return Array.isArray(jobs) ? jobs : [];
  } catch {
    return [];
  }
}

function save(jobs) {
  localStorage.setItem(STORAGE, JSON.stringify(jobs.slice(0, MAX_JOBS)));
}

/** Remember a submitted job: {id, kind, label, submitted}. */
export function rememberJob(entry) {
  const jobs = recentJobs().filter((j) => j.id !== entry.id);
  jobs.unshift({ submitted: new Date().toISOString(), ...entry });
  save(jobs);
  renderJobs();
}

/** Keep the last known status and timings of a job, so the table shows them without a request. */
export function updateJob(job) {
  const jobs = recentJobs();
  const entry = jobs.find((j) => j.id === job.id);
  if (!entry) return;
  entry.status = job.status;
  entry.timings = job.timings;
  entry.started_at = job.started_at;
  entry.finished_at = job.finished_at;
  entry.error = job.error;
  save(jobs);
  renderJobs();
}

export function clearJobs() {
  save([]);
  renderJobs();
}

function seconds(v) {
  return v < 10 ? v.toFixed(2) : v.toFixed(1);
}

function timingText(entry) {
  const t = entry.timings || {};
  const parts = [];
  if (entry.started_at && entry.finished_at) {
    parts.push(`run ${seconds((Date.parse(entry.finished_at) - Date.parse(entry.started_at)) / 1000)} s`);
  }
  if (t.queue_wait != null) parts.push(`queue ${seconds(t.queue_wait)} s`);
  for (const stage of ["denoise", "bake"]) if (t[stage] != null) parts.push(`${stage} ${seconds(t[stage])} s`);
  return parts.join(", ");
}

export function renderJobs() {
  const body = document.querySelector("#jobs-table tbody");
  const jobs = recentJobs();
  document.getElementById("jobs-empty").hidden = jobs.length > 0;
  document.getElementById("jobs-table").hidden = jobs.length === 0;
  body.replaceChildren(
    ...jobs.map((entry) => {
      const tr = document.createElement("tr");
      tr.dataset.jobId = entry.id;
      const link = document.createElement("a");
      link.href = `#job=${encodeURIComponent(entry.id)}`;
      link.textContent = entry.label || entry.id;
      link.title = entry.id;
      const status = entry.status || "queued";
      const cells = [
        link,
        entry.kind,
        entry.error ? `${status} (${entry.error.code})` : status,
        new Date(entry.submitted).toLocaleString(),
        timingText(entry),
      ];
      for (const [i, content] of cells.entries()) {
        const td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) td.scope = "row";
        if (i === 2) td.className = `status status-${status}`;
        td.append(content);
        tr.append(td);
      }
      return tr;
    }),
  );
}

/** Re-read every listed job that is not finished; an expired one is marked so. */
export async function refreshJobs() {
  for (const entry of recentJobs()) {
    if (["succeeded", "failed", "canceled", "expired"].includes(entry.status)) continue;
    try {
      updateJob(await getJob(entry.id));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        updateJob({ id: entry.id, status: "expired", timings: entry.timings });
      }
    }
  }
}
