// Bundles src/index.ts into the demo page's ES module (committed, so `make run` needs no Node.js).
// With --check, builds in memory and fails when the committed bundle differs from the sources.
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const target = fileURLToPath(new URL("../../../app/dev/static/demo/vtt-client.js", import.meta.url));
const entry = fileURLToPath(new URL("../src/index.ts", import.meta.url));

const result = await build({
  entryPoints: [entry],
  bundle: true,
  format: "esm",
  target: "es2022",
  platform: "browser",
  write: false,
  legalComments: "none",
  banner: {
    js: "// Generated from clients/ts/src by `npm run build:demo` (esbuild); do not edit.",
  },
});
const bundle = result.outputFiles[0].text;

if (process.argv.includes("--check")) {
  const committed = await readFile(target, "utf8").catch(() => "");
  if (committed !== bundle) {
    console.error("app/dev/static/demo/vtt-client.js is out of date: run `npm run build:demo` in clients/ts and commit it");
    process.exit(1);
  }
  console.log("app/dev/static/demo/vtt-client.js matches the sources");
} else {
  await writeFile(target, bundle);
  console.log(`wrote ${target}`);
}
