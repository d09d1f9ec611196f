// Feeds a text stream to the page's SSE parser (viewer/src/sse.ts, bundled by the test) in the chunks
// given and prints the events it yields, for tests/viewer/test_sse_parser.py.
// usage: node sse_parse.mjs <bundled sse.mjs> <chunks.json>   (chunks.json: a JSON array of strings)
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [bundle, chunksFile] = process.argv.slice(2);
const { SseParser } = await import(pathToFileURL(bundle).href);
const parser = new SseParser();
const events = [];
for (const chunk of JSON.parse(readFileSync(chunksFile, "utf8"))) events.push(...parser.feed(chunk));
console.log(JSON.stringify({ events, lastId: parser.lastId, retry: parser.retry }));
