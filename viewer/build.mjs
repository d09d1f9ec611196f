// Builds src/ into the API's static files: index.html plus content-hashed assets, all served by the
// API under /viewer/ (no CDN at view time). Run through `make viewer`.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "api", "sharpml_api", "static", "viewer");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const result = await esbuild.build({
  entryPoints: { viewer: join(here, "src", "main.ts"), style: join(here, "src", "style.css") },
  outdir: out,
  bundle: true,
  splitting: true, // three.js and Spark load only once there is a scene to show
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: false,
  entryNames: "[name]-[hash]",
  chunkNames: "chunk-[hash]",
  legalComments: "linked",
  metafile: true,
  logLevel: "warning",
});

const named = (entry) =>
  relative(
    out,
    Object.entries(result.metafile.outputs).find(([, o]) => o.entryPoint && o.entryPoint.endsWith(entry))[0],
  );
const html = readFileSync(join(here, "src", "index.html"), "utf8")
  .replace("{{js}}", named("src/main.ts"))
  .replace("{{css}}", named("src/style.css"));
writeFileSync(join(out, "index.html"), html);
console.log(`viewer built into ${relative(process.cwd(), out)}`);
