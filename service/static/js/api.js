// The HTTP API as the page uses it: the API key header, errors in the API's own shape, job events.
//
// Every call goes to this page's own origin with relative URLs, so the page works behind a path prefix.
// Artifacts are fetched (not linked) so that the API key travels in a header, never in a URL.

const KEY_STORAGE = "realiz3d.apiKey";

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

// "/v1/jobs/x" (as the API writes its links) -> "v1/jobs/x", relative to the page.
export function rel(path) {
  return path.replace(/^\/+/, "");
}

/** An error answered by the API (or the network), with what the page needs to show it. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** 422 messages are `field.path: message; other: message`: one entry per field. */
  fieldMessages() {
    if (this.status !== 422) return [];
    return this.message.split("; ").map((part) => {
      const m = /^([A-Za-z_][\w.]*): (.*)$/s.exec(part);
      return m ? { field: m[1], message: m[2] } : { field: null, message: part };
    });
  }

  /** One line for a person: what went wrong and, for 429/503, when to retry. */
  describe() {
    const retry = this.retryAfter != null ? ` Retry in ${this.retryAfter} s.` : "";
    const what = {
      401: "The service needs a valid API key",
      413: "Too large",
      429: "Too many requests",
      503: "The service cannot take the job now",
      0: "The service cannot be reached",
    }[this.status];
    return `${what ? `${what}: ` : ""}${this.message}${retry}`;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorFrom(response) {
  let code = "error";
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch {
    // not JSON (a proxy's page): keep the status line
  }
  const retry = response.headers.get("Retry-After");
  return new ApiError(response.status, code, message, retry != null ? Number(retry) : null);
}

/** fetch() with the key; resolves to the Response when ok, throws ApiError otherwise. */
export async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(rel(path), { ...options, headers: headers(options.headers) });
  } catch (e) {
    throw new ApiError(0, "network", `${e.message || e}`);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function json(path, options = {}) {
  return (await call(path, options)).json();
}

export function submitMultiview(params) {
  return json("v1/multiview", {
    method: "POST",
    body: JSON.stringify(params),
    headers: { "Content-Type": "application/json" },
  });
}

export function submitTexture(file, params) {
  const body = new FormData();
  if (file) body.append("mesh", file, file.name); // none: the API says which part is missing
  body.append("params", JSON.stringify(params));
  return json("v1/texture", { method: "POST", body });
}

export const getJob = (id) => json(`v1/jobs/${encodeURIComponent(id)}`);
export const cancelJob = (id) => json(`v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });

/** An artifact's bytes as a Blob (the key goes in the header). */
export async function artifactBlob(artifact) {
  return (await call(artifact.url)).blob();
}

/**
 * Follow a job's Server-Sent Events until it ends: `onEvent(type, data)` for `status` and `progress`.
 *
 * fetch() rather than EventSource, which cannot send the API key. A stream that drops before the job is
 * done is re-opened (the first event of a new stream is the whole job, so nothing is missed).
 * Resolves to the final job.
 */
export async function followJob(id, onEvent, signal) {
  for (let attempt = 0; ; attempt++) {
    let job = null;
    try {
      const response = await call(`v1/jobs/${encodeURIComponent(id)}/events`, {
        headers: { Accept: "text/event-stream" },
        signal,
      });
      job = await readEvents(response, onEvent);
    } catch (e) {
      if (signal?.aborted) throw e;
      // 4xx (not found, unauthorized) will not get better by asking again; network and 5xx might
      if (e instanceof ApiError && e.status !== 0 && e.status < 500) throw e;
    }
    if (job && ["succeeded", "failed", "canceled"].includes(job.status)) return job;
    const now = await getJob(id);
    if (["succeeded", "failed", "canceled"].includes(now.status)) {
      onEvent("status", now);
      return now;
    }
    await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** attempt, 5000)));
  }
}

async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return last;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (!data.length) continue; // a keepalive comment
      const payload = JSON.parse(data.join("\n"));
      if (type === "error") throw new ApiError(404, payload.code, payload.message);
      if (type === "status") last = payload;
      onEvent(type, payload);
    }
  }
}
