import type { TokenSource } from "@wtsfs/vtt-client";

/**
 * Development stand-in for Clerk's `useAuth().getToken`: a token for `user` as `role` in
 * `campaign`, from the vtt server's dev token endpoint (proxied at /dev-token, next.config.ts).
 */
export function devTokenSource(user: string, role: "gm" | "player", campaign: string): TokenSource {
  return async () => {
    const query = new URLSearchParams({ user, role, campaign });
    const response = await fetch(`/dev-token?${query}`, { cache: "no-store" });
    if (!response.ok) {
      throw new Error(`the dev token endpoint answered ${response.status}`);
    }
    const { token } = (await response.json()) as { token: string };
    return token;
  };
}
