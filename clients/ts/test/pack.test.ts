// The package as `npm pack` makes it: what the tarball holds, where its exports point, and that a
// consumer resolves both entries by name (Node, TypeScript, a browser bundle without Node-only imports).
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { promisify } from "node:util";
import { build } from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const PACKAGE = resolve(import.meta.dirname, "..");
const NAME = "@wtsfs/vtt-client";
const ENTRIES = { ".": "dist/index", "./react": "dist/react" } as const;

interface PackReport {
  filename: string;
  files: Array<{ path: string }>;
}

let scratch: string;
let files: string[];
// The consumer: a folder whose node_modules holds the unpacked tarball (and react, for its types).
let consumer: string;
let installed: string;

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "vtt-pack-"));
  const { stdout } = await run("npm", ["pack", "--json", "--loglevel=error", "--pack-destination", scratch], {
    cwd: PACKAGE,
  });
  const [report] = JSON.parse(stdout) as [PackReport];
  files = report.files.map((file) => file.path).sort();
  consumer = join(scratch, "consumer");
  installed = join(consumer, "node_modules", NAME);
  await mkdir(installed, { recursive: true });
  await run("tar", ["-xzf", join(scratch, report.filename), "-C", installed, "--strip-components=1"]);
  await mkdir(join(consumer, "node_modules", "@types"));
  await symlink(join(PACKAGE, "node_modules", "react"), join(consumer, "node_modules", "react"));
  await symlink(join(PACKAGE, "node_modules", "@types", "react"), join(consumer, "node_modules", "@types", "react"));
  await writeFile(join(consumer, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe("npm pack", () => {
  it("packs the built modules with their declarations and package.json, and no sources, tests or scripts", () => {
    for (const stem of Object.values(ENTRIES)) {
      expect(files).toContain(`${stem}.js`);
      expect(files).toContain(`${stem}.d.ts`);
    }
    const unexpected = files.filter((path) => path !== "package.json" && !/^dist\/[\w.-]+\.(js|d\.ts)$/.test(path));
    expect(unexpected).toEqual([]);
  });

  it("points each export at a packed file, types first, for import", async () => {
    const manifest = JSON.parse(await readFile(join(installed, "package.json"), "utf8")) as {
      exports: Record<string, Record<string, string>>;
    };
    expect(Object.keys(manifest.exports)).toEqual(Object.keys(ENTRIES));
    for (const [subpath, stem] of Object.entries(ENTRIES)) {
      expect(manifest.exports[subpath]).toEqual({ types: `./${stem}.d.ts`, import: `./${stem}.js` });
    }
  });

  it("lets Node import the core entry by name", async () => {
    const script = `import("${NAME}").then((m) => console.log(Object.keys(m).sort().join(",")))`;
    const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], { cwd: consumer });
    expect(stdout.trim().split(",")).toEqual(expect.arrayContaining(["TableMirror", "connect", "socketUrl"]));
  });

  it("gives a TypeScript consumer the declarations of both entries under nodenext resolution", async () => {
    const source = [
      `import { connect, type ClientView } from "${NAME}";`,
      `import { useVTT, type VTTHandle } from "${NAME}/react";`,
      `export const open: (view: ClientView) => boolean = (view) => view.status === "open";`,
      `export const parts: [typeof connect, typeof useVTT, VTTHandle["send"] | null] = [connect, useVTT, null];`,
    ].join("\n");
    await writeFile(join(consumer, "consumer.ts"), source);
    const tsc = join(PACKAGE, "node_modules", "typescript", "bin", "tsc");
    const options = ["--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext"];
    // tsc prints its errors on stdout, and nothing when the program type-checks.
    const checked = run(process.execPath, [tsc, ...options, "--types", "react", "consumer.ts"], { cwd: consumer });
    const { stdout } = await checked.catch((failed: { stdout: string }) => failed);
    expect(stdout).toBe("");
  });

  it("bundles both entries for the browser with nothing imported but react", async () => {
    const result = await build({
      stdin: { contents: `export * from "${NAME}"; export * from "${NAME}/react";`, resolveDir: consumer, loader: "js" },
      absWorkingDir: consumer,
      bundle: true,
      platform: "browser",
      format: "esm",
      write: false,
      metafile: true,
      logLevel: "silent",
      external: ["react"],
    });
    const inputs = Object.keys(result.metafile.inputs).filter((path) => path !== "<stdin>");
    const outside = inputs.filter((path) => relative(installed, resolve(consumer, path)).startsWith(".."));
    expect(outside).toEqual([]);
    const imported = Object.values(result.metafile.outputs).flatMap((output) => output.imports.map((i) => i.path));
    expect([...new Set(imported)]).toEqual(["react"]);
  });
});
