import type { NextConfig } from "next";

// The vtt-realtime server, as the browser reaches it (inlined into the bundle at build time).
const vttUrl = process.env.NEXT_PUBLIC_VTT_WS_URL ?? "ws://127.0.0.1:8080";

const config: NextConfig = {
  reactStrictMode: true,
  env: { NEXT_PUBLIC_VTT_WS_URL: vttUrl },
  // Development stand-in for Clerk: the server's dev token endpoint, reached through this server
  // (it hands out tokens to loopback callers only, and the browser's fetch would be cross-origin).
  async rewrites() {
    return [{ source: "/dev-token", destination: new URL("/demo/token", vttUrl.replace(/^ws/, "http")).href }];
  },
};

export default config;
