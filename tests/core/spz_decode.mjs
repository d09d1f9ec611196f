// Decodes an .spz with Niantic's reference library (compiled to WebAssembly: @spz-loader/core, from
// viewer/node_modules) and writes what it read as JSON, for tests/core/test_spz.py.
// usage: node spz_decode.mjs <spz-loader-core entry> <in.spz> <out.json>
import { readFileSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [entry, input, output] = process.argv.slice(2);
// The package's bundler replaced `node:module` with an empty stub, so its Node branch (which only
// reads its own path through createRequire; the WebAssembly is inlined) cannot start. Marking the
// process as a renderer takes the browser branch, which needs nothing Node lacks.
process.type = "renderer";
const { loadSpz } = await import(pathToFileURL(entry).href);
// colorScaleFactor SH_C0 turns the DC term back into RGB (the loader's default rounds it to 0.282);
// scales come back exponentiated and alphas through the sigmoid; rotations are x, y, z, w.
const cloud = await loadSpz(new Uint8Array(readFileSync(input)), { colorScaleFactor: 0.28209479177387814 });
const plain = (a) => Array.from(a);
writeFileSync(
  output,
  JSON.stringify({
    numPoints: cloud.numPoints,
    shDegree: cloud.shDegree,
    antialiased: cloud.antialiased,
    positions: plain(cloud.positions),
    scales: plain(cloud.scales),
    rotations: plain(cloud.rotations),
    alphas: plain(cloud.alphas),
    colors: plain(cloud.colors),
    sh: plain(cloud.sh),
  }),
);
