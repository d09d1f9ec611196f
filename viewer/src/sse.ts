// Server-sent events over fetch(): EventSource cannot send an Authorization header, so the stream is
// read from a fetch body and parsed here (the WHATWG event-stream rules), reconnecting with backoff.

export interface SseEvent {
  event: string;
  data: string;
  id: string | null;
}

/** Incremental parser: feed() text chunks as they arrive, get whole events back. */
export class SseParser {
  private buffer = "";
  private data: string[] = [];
  private event = "";
  lastId: string | null = null;
  retry: number | null = null;
  private skipLF = false;

  feed(chunk: string): SseEvent[] {
    if (chunk === "") return [];
    // A line ends at CRLF, LF or CR. A chunk that ends in CR has ended its line; an LF opening the
    // next chunk is that CRLF's second half, not an empty line.
    if (this.skipLF && chunk.startsWith("\n")) chunk = chunk.slice(1);
    this.skipLF = chunk.endsWith("\r");
    this.buffer += chunk;
    const out: SseEvent[] = [];
    const lines = this.buffer.split(/\r\n|\n|\r/);
    this.buffer = lines.pop() ?? "";
    for (const line of lines) {
      if (line === "") {
        if (this.data.length > 0) {
          out.push({ event: this.event || "message", data: this.data.join("\n"), id: this.lastId });
        }
        this.data = [];
        this.event = "";
        continue;
      }
      if (line.startsWith(":")) continue; // comment (keep-alive)
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
      else if (field === "event") this.event = value;
      else if (field === "id" && !value.includes("\0")) this.lastId = value;
      else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    }
    return out;
  }
}

/** An HTTP answer that reconnecting cannot fix (401, 403, 404, 410): the stream stops for good. */
export class FatalHttpError extends Error {
  constructor(
    readonly status: number,
    readonly problem: { title?: string; detail?: string } | null,
  ) {
    super(problem?.detail ?? problem?.title ?? `HTTP ${status}`);
  }
}

export interface StreamOptions {
  url: string;
  headers: Record<string, string>;
  onEvent: (e: SseEvent) => "stop" | void;
  onState: (state: "connecting" | "open" | "waiting", delayMs?: number) => void;
  onFatal: (err: FatalHttpError) => void;
  signal: AbortSignal;
}

const FATAL = new Set([400, 401, 403, 404, 410]);

async function problemOf(resp: Response): Promise<{ title?: string; detail?: string } | null> {
  try {
    return (await resp.json()) as { title?: string; detail?: string };
  } catch {
    return null;
  }
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });

/** Follow the stream until onEvent says stop, a fatal answer comes, or the signal aborts. Between
 * connections waits the server's `retry` (3 s by default), doubling after each failure up to 30 s. */
export async function follow(opts: StreamOptions): Promise<void> {
  let lastId: string | null = null;
  let failures = 0;
  let retry = 3000;
  while (!opts.signal.aborted) {
    opts.onState("connecting");
    const parser = new SseParser();
    try {
      const headers: Record<string, string> = { Accept: "text/event-stream", ...opts.headers };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const resp = await fetch(opts.url, { headers, cache: "no-store", signal: opts.signal });
      if (FATAL.has(resp.status)) {
        opts.onFatal(new FatalHttpError(resp.status, await problemOf(resp)));
        return;
      }
      if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
      opts.onState("open");
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const ev of parser.feed(value)) {
          failures = 0;
          if (opts.onEvent(ev) === "stop") {
            await reader.cancel();
            return;
          }
        }
        lastId = parser.lastId ?? lastId;
        retry = parser.retry ?? retry;
      }
    } catch (err) {
      if (opts.signal.aborted) return;
      failures += 1;
    }
    const delay = Math.min(30000, retry * 2 ** Math.min(failures, 4)) * (0.8 + 0.4 * Math.random());
    opts.onState("waiting", delay);
    await sleep(delay, opts.signal);
  }
}
