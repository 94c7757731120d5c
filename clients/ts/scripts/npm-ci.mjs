// `npm ci` in a package folder, skipped when its node_modules was installed from the same inputs.
// The inputs are package-lock.json, the files given, and the Node.js version; a stamp in
// node_modules records their hash (npm ci deletes node_modules, so a failed install leaves none).
// CLI: node scripts/npm-ci.mjs [folder] (default: this package).
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

function inputsHash(folder, files) {
  const hash = createHash("sha256").update(process.version);
  for (const file of ["package-lock.json", ...files]) {
    hash.update(file).update(readFileSync(join(folder, file)));
  }
  return hash.digest("hex");
}

/** Run `npm ci` in `folder` unless its node_modules came from the same lock and `files`. */
export function npmCi(folder, files = []) {
  const stamp = join(folder, "node_modules", ".npm-ci-stamp");
  const wanted = inputsHash(folder, files);
  if (existsSync(stamp) && readFileSync(stamp, "utf8") === wanted) {
    console.log(`${folder}: node_modules is up to date with its lock`);
    return;
  }
  const result = spawnSync("npm", ["ci", "--no-audit", "--no-fund", "--loglevel=error"], {
    cwd: folder,
    stdio: "inherit",
  });
  if (result.status !== 0) {
    throw new Error(`npm ci failed in ${folder}`);
  }
  writeFileSync(stamp, wanted);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  npmCi(resolve(process.argv[2] ?? fileURLToPath(new URL("..", import.meta.url))));
}
