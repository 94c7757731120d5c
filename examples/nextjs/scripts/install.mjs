// Installs this example as a real app would install the client: from its packed tarball.
// Builds and packs clients/ts into vendor/vtt-client.tgz, then `npm ci` here (skipped when
// node_modules already came from this lock and this tarball).
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, renameSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { npmCi } from "../../../clients/ts/scripts/npm-ci.mjs";

const example = fileURLToPath(new URL("..", import.meta.url));
const client = fileURLToPath(new URL("../../../clients/ts", import.meta.url));
const vendor = fileURLToPath(new URL("../vendor", import.meta.url));
const TARBALL = "vendor/vtt-client.tgz";

function pack() {
  npmCi(client);
  mkdirSync(vendor, { recursive: true });
  const result = spawnSync("npm", ["pack", "--json", "--loglevel=error", "--pack-destination", vendor], {
    cwd: client,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  if (result.status !== 0) {
    throw new Error("npm pack failed in clients/ts");
  }
  const report = JSON.parse(result.stdout);
  renameSync(`${vendor}/${report[0].filename}`, `${example}/${TARBALL}`);
}

// A checksum of the tarball in the lock would pin yesterday's client: npm ci would install
// the copy in its cache, or fail on a cold one. `npm install <tarball>` writes one: remove it.
function checkLockDoesNotPinTheTarball() {
  const lock = JSON.parse(readFileSync(`${example}/package-lock.json`, "utf8"));
  const entry = lock.packages["node_modules/@wtsfs/vtt-client"];
  if (entry?.resolved !== `file:${TARBALL}` || "integrity" in entry) {
    throw new Error(
      `examples/nextjs/package-lock.json: "node_modules/@wtsfs/vtt-client" must be resolved ` +
        `from file:${TARBALL} without "integrity" (the tarball is rebuilt at every install)`,
    );
  }
}

pack();
checkLockDoesNotPinTheTarball();
npmCi(example, ["package.json", TARBALL]);
