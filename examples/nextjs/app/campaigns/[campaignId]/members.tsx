// Who is at the table (presence): each member once, with their role and open connections.
import type { Members } from "@wtsfs/vtt-client";

export function AtTheTable({ members, userId }: { members: Members; userId: string | null }) {
  return (
    <section>
      <h2 style={{ fontSize: 14 }}>At the table</h2>
      <ul className="members" style={{ listStyle: "none", padding: 0 }}>
        {Object.values(members).map((member) => (
          <li key={member.user_id} className="member" data-user-id={member.user_id} data-role={member.role}>
            {member.username ?? member.user_id}
            {member.user_id === userId && " (you)"} · {member.role === "gm" ? "GM" : "player"}
            {member.connections === 0 ? " · reconnecting" : member.connections > 1 ? ` · ${member.connections} tabs` : ""}
          </li>
        ))}
      </ul>
    </section>
  );
}
