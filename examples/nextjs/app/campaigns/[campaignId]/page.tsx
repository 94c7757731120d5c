"use client";
// The live table of the campaign in the URL: /campaigns/<id>?user=alice&role=gm|player
// (user and role stand in for the signed-in Clerk user).
import { VTTProvider } from "@wtsfs/vtt-client/react";
import { useParams, useSearchParams } from "next/navigation";
import { useMemo } from "react";
import { devTokenSource } from "../../dev-token";
import { Board } from "./board";

export default function CampaignPage() {
  const { campaignId } = useParams<{ campaignId: string }>();
  const query = useSearchParams();
  const user = query.get("user") ?? "alice";
  const role = query.get("role") === "player" ? "player" : "gm";
  // With Clerk: const { getToken } = useAuth();
  const getToken = useMemo(() => devTokenSource(user, role, campaignId), [user, role, campaignId]);
  return (
    <VTTProvider config={{ url: process.env.NEXT_PUBLIC_VTT_WS_URL, getToken }}>
      <Board campaignId={campaignId} isGm={role === "gm"} />
    </VTTProvider>
  );
}
