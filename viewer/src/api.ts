// How the page talks to the API: the job id from the path, the signed grant (exp, kid, sig) from the
// query, or an owner's bearer token (URL fragment #token=..., then kept in sessionStorage only).

export interface Artifact {
  url: string;
  bytes?: number;
  sha256?: string;
  mediaType?: string;
  media_type?: string;
}

export interface JobStatus {
  id: string;
  phase: string;
  finished: boolean;
  message?: string | null;
  progress: { percent: number; stage?: string | null };
  queue_position?: number | null;
  training?: { backend?: string | null } | null;
  outputs?: { url?: string | null } | null;
  links: {
    status: string;
    events: string;
    view?: string;
    artifacts?: Record<string, Artifact>;
    expiresAt?: string;
    expires_at?: string;
  };
}

export interface Problem {
  status: number;
  title?: string;
  detail?: string;
}

const TOKEN_KEY = "sharpml.token";

export class Api {
  readonly jobId: string;
  private readonly grant: URLSearchParams;
  private readonly token: string | null;

  constructor(loc: Location, storage: Storage) {
    const match = /\/v1\/jobs\/([^/]+)\/view\/?$/.exec(loc.pathname);
    this.jobId = match ? decodeURIComponent(match[1]) : "";
    const query = new URLSearchParams(loc.search);
    this.grant = new URLSearchParams();
    for (const p of ["exp", "kid", "sig"]) {
      const v = query.get(p);
      if (v !== null) this.grant.set(p, v);
    }
    // A token in the fragment is moved to this tab's sessionStorage and out of the address bar (the
    // fragment never reaches the server, but it would stay in history and screenshots).
    const fragment = new URLSearchParams(loc.hash.replace(/^#/, ""));
    const fromFragment = fragment.get("token");
    if (fromFragment) {
      storage.setItem(TOKEN_KEY, fromFragment);
      history.replaceState(null, "", loc.pathname + loc.search);
    }
    this.token = storage.getItem(TOKEN_KEY);
  }

  get hasGrant(): boolean {
    return this.grant.has("sig") || this.token !== null;
  }

  /** Headers for API calls: the owner's bearer token when there is one. */
  headers(): Record<string, string> {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  /** A same-origin API path with the signed grant appended (the grant authorises it read-only). */
  url(path: string): string {
    const q = this.grant.toString();
    return q ? `${path}?${q}` : path;
  }

  statusUrl(): string {
    return this.url(`/v1/jobs/${encodeURIComponent(this.jobId)}`);
  }

  eventsUrl(): string {
    return this.url(`/v1/jobs/${encodeURIComponent(this.jobId)}/events`);
  }

  async job(): Promise<JobStatus> {
    const resp = await fetch(this.statusUrl(), { headers: this.headers(), cache: "no-store" });
    if (!resp.ok) throw await problem(resp);
    return (await resp.json()) as JobStatus;
  }
}

export async function problem(resp: Response): Promise<Problem> {
  let body: { title?: string; detail?: string } = {};
  try {
    body = await resp.json();
  } catch {
    // not a problem document; the status says enough
  }
  return { status: resp.status, title: body.title, detail: body.detail };
}

export function isProblem(x: unknown): x is Problem {
  return typeof x === "object" && x !== null && typeof (x as Problem).status === "number";
}
