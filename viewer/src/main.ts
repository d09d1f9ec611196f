// The viewer page (GET /v1/jobs/{id}/view): live progress from the job's event stream while it runs,
// the splat in WebGL once it is Complete, a plain message when it failed, was cancelled, or the link
// is expired or not valid. document.body.dataset.state says which view shows (tests wait on it).
import { Api, type Artifact, type JobStatus, type Problem, isProblem, problem } from "./api";
import { FatalHttpError, follow } from "./sse";
import stagesFile from "./stages.json";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const PHASE_ORDER = ["Pending", "Queued", "Reconstructing", "Reconstructed", "Training", "Trained", "Delivering", "Complete"];
/** The order the viewer prefers: the smallest file that keeps what the viewer shows. */
const PREFERRED = ["spz", "splat"];

type State = "loading" | "progress" | "viewing" | "ended" | "denied" | "error";

function setState(state: State): void {
  document.body.dataset.state = state;
}

function show(section: string): void {
  for (const id of ["progress", "viewer", "notice"]) $(id).hidden = id !== section;
}

function notice(title: string, text: string): void {
  $("notice-title").textContent = title;
  $("notice-text").textContent = text;
  show("notice");
  $("notice-title").focus();
}

function formatBytes(n: number | undefined): string {
  if (n === undefined) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** A refused link or request as words: 410 expired, 403 not valid, 404 gone, 401 no grant. */
function refused(p: Problem | FatalHttpError): void {
  const status = p.status;
  const detail = (p instanceof FatalHttpError ? p.problem?.detail : p.detail) ?? "";
  const [title, text] =
    status === 410
      ? ["This link has expired", "Ask whoever sent it for a new link."]
      : status === 403
        ? ["This link is not valid", "It may have been altered or copied incompletely. Ask for a new link."]
        : status === 404
          ? ["No such job", "The job does not exist any more, or never did."]
          : status === 401
            ? ["Sign-in needed", "Open this page through the link you were sent."]
            : [`The request was refused (${status})`, ""];
  setState("denied");
  const sentence = detail ? `${detail.charAt(0).toUpperCase()}${detail.slice(1)}${/[.!?]$/.test(detail) ? "" : "."}` : "";
  notice(title, [sentence, text].filter(Boolean).join(" "));
}

// ---- progress view ---------------------------------------------------------------------------

let lastMessage = "";

function renderProgress(job: JobStatus): void {
  show("progress");
  setState("progress");
  const percent = Math.max(0, Math.min(100, job.progress?.percent ?? 0));
  $("phase").textContent = job.phase;
  const overall = $<HTMLProgressElement>("overall");
  overall.value = percent;
  $("overall-text").textContent = `${percent}%`;
  $("stage").textContent = job.progress?.stage ?? "";
  const queue = $("queue");
  queue.hidden = job.queue_position == null;
  queue.textContent = job.queue_position == null ? "" : `Position in the queue: ${job.queue_position}`;

  const at = PHASE_ORDER.indexOf(job.phase);
  const list = $("stages");
  list.replaceChildren();
  for (const stage of stagesFile.stages) {
    const first = PHASE_ORDER.indexOf(stage.phases[0]);
    const last = PHASE_ORDER.indexOf(stage.phases[stage.phases.length - 1]);
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = stage.name;
    const state = document.createElement("span");
    state.className = "stage-state";
    let stagePercent: number | null = null;
    if (stage.phases[0] === "Training" && job.training?.backend === "none") {
      li.dataset.stage = "skipped";
      state.textContent = "not asked for";
    } else if (at > last) {
      li.dataset.stage = "done";
      state.textContent = "done";
      stagePercent = stage.band ? 100 : null;
    } else if (at >= first) {
      li.dataset.stage = "active";
      if (stage.band) {
        const [lo, hi] = stage.band;
        stagePercent = Math.round((100 * Math.max(0, Math.min(hi - lo, percent - lo))) / (hi - lo));
        state.textContent = `${stagePercent}%`;
      } else {
        state.textContent = "now";
      }
      li.setAttribute("aria-current", "step");
    } else {
      li.dataset.stage = "waiting";
      state.textContent = "waiting";
    }
    li.append(name);
    if (stagePercent !== null) {
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = stagePercent;
      bar.setAttribute("aria-label", `${stage.name}: ${stagePercent}%`);
      li.append(bar);
    }
    li.append(state);
    list.append(li);
  }

  const message = job.message ?? "";
  if (message && message !== lastMessage) {
    lastMessage = message;
    const item = document.createElement("li");
    item.textContent = message;
    const log = $("messages");
    log.append(item);
    while (log.children.length > 8) log.firstElementChild?.remove();
  }
}

// ---- finished ----------------------------------------------------------------------------------

function downloads(artifacts: Record<string, Artifact>): void {
  const list = $("downloads");
  list.replaceChildren();
  for (const [format, a] of Object.entries(artifacts)) {
    const li = document.createElement("li");
    const link = document.createElement("a");
    link.href = a.url;
    link.textContent = `.${format}`;
    link.setAttribute("download", `scene.${format}`);
    li.append(link, document.createTextNode(` ${formatBytes(a.bytes)}`));
    list.append(li);
  }
}

async function fetchBytes(url: string, headers: Record<string, string>, total?: number): Promise<Uint8Array> {
  const resp = await fetch(url, { headers });
  if (!resp.ok || !resp.body) throw await problem(resp);
  const size = total ?? Number(resp.headers.get("Content-Length") ?? 0);
  const chunks: Uint8Array[] = [];
  let loaded = 0;
  const reader = resp.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    $("load-text").textContent = size ? `Loading the scene: ${Math.round((100 * loaded) / size)}%` : `Loading the scene: ${formatBytes(loaded)}`;
  }
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

async function complete(api: Api): Promise<void> {
  // The stream's links may be old by now: the job's own answer carries freshly signed ones.
  const job = await api.job();
  const artifacts: Record<string, Artifact> = { ...(job.links.artifacts ?? {}) };
  if (Object.keys(artifacts).length === 0 && job.outputs?.url) artifacts.splat = { url: job.outputs.url };
  const format = PREFERRED.find((f) => artifacts[f]);
  show("viewer");
  downloads(artifacts);
  if (!format) {
    setState("error");
    notice("The scene is not available", "The job is complete but lists no splat to show.");
    return;
  }
  $("load-text").textContent = "Loading the scene…";
  const bytes = await fetchBytes(artifacts[format].url, {}, artifacts[format].bytes);
  const { showSplat } = await import("./scene");
  await showSplat($<HTMLCanvasElement>("scene"), bytes, `scene.${format}`);
  $("load-text").textContent = "Drag to orbit, scroll to zoom, right-drag to pan.";
  setState("viewing");
}

function ended(job: JobStatus): void {
  setState("ended");
  if (job.phase === "Cancelled") notice("This job was cancelled", job.message ?? "");
  else notice("This job failed", job.message ?? "No reason was recorded.");
}

// ---- start -------------------------------------------------------------------------------------

async function main(): Promise<void> {
  setState("loading");
  const api = new Api(window.location, window.sessionStorage);
  if (!api.jobId) {
    setState("error");
    notice("Not a job page", "This page is opened through a job's view link.");
    return;
  }
  const controller = new AbortController();
  let finished: JobStatus | null = null;
  const connection = $("connection");
  await follow({
    url: api.eventsUrl(),
    headers: api.headers(),
    signal: controller.signal,
    onState: (state, delay) => {
      connection.textContent =
        state === "waiting" ? `Connection lost; retrying in ${Math.round((delay ?? 0) / 1000)} s` : state === "connecting" ? "Connecting…" : "";
    },
    onFatal: (err) => refused(err),
    onEvent: (ev) => {
      if (ev.event === "status") {
        const job = JSON.parse(ev.data) as JobStatus;
        if (job.finished) {
          finished = job;
          return "stop";
        }
        renderProgress(job);
      } else if (ev.event === "deleted") {
        setState("ended");
        notice("This job was deleted", "");
        return "stop";
      }
    },
  });
  connection.textContent = "";
  const job = finished as JobStatus | null;
  if (!job) return;
  if (job.phase === "Complete") {
    try {
      await complete(api);
    } catch (err) {
      if (isProblem(err)) refused(err);
      else {
        setState("error");
        notice("The scene could not be shown", String(err instanceof Error ? err.message : err));
      }
    }
  } else ended(job);
}

void main();
