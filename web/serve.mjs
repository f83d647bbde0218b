#!/usr/bin/env node
// A tiny static file server for the page (`make web`): serves the repository root on 127.0.0.1
// so web/index.html can fetch ../exported bundles, ../examples and web/node_modules' WASM files.
//
//   node web/serve.mjs [--port 8000]        then open http://127.0.0.1:8000/web/

import { createServer } from "node:http";
import { readFile, stat } from "node:fs/promises";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
  ".wasm": "application/wasm", ".onnx": "application/octet-stream", ".png": "image/png", ".css": "text/css",
  ".evz": "application/octet-stream", ".svg": "image/svg+xml",
};

/** An http.Server serving `root` read-only (GET/HEAD; no paths outside it). `mounts` maps URL
 * prefixes ("/extra/bundle/") to other folders served the same way (tests mount a bundle there). */
export function staticServer(root = ROOT, mounts = {}) {
  return createServer(async (request, response) => {
    const path = decodeURIComponent(new URL(request.url, "http://x").pathname);
    let base = root;
    let rest = path;
    for (const [prefix, folder] of Object.entries(mounts)) {
      if (path.startsWith(prefix)) {
        base = resolve(folder);
        rest = path.slice(prefix.length - 1);
      }
    }
    let file = normalize(join(base, rest));
    if (!file.startsWith(base) || !["GET", "HEAD"].includes(request.method)) {
      response.writeHead(403).end();
      return;
    }
    try {
      if ((await stat(file)).isDirectory()) file = join(file, "index.html");
      const body = await readFile(file);
      response.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
      response.end(request.method === "HEAD" ? undefined : body);
    } catch {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found");
    }
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const at = process.argv.indexOf("--port");
  const port = at > 0 ? Number(process.argv[at + 1]) : 8000;
  staticServer().listen(port, "127.0.0.1", () => {
    console.log(`edgevae page: http://127.0.0.1:${port}/web/  (serving ${ROOT}; Ctrl-C stops)`);
  });
}
