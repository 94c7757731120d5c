// The chat as useVTT keeps it (history, then live messages), and a box to say or roll.
import type { ChatMessage, ChatSend, Roll } from "@wtsfs/vtt-client";
import { useState, type FormEvent } from "react";

/** "/roll 2d20kh1+5 # attack" (or "/r ...") is rolled by the server; anything else is said. */
function chatSend(text: string): ChatSend {
  return /^\/r(oll)?\s/i.test(text) ? { content: text, message_type: "roll", roll: text } : { content: text, message_type: "text" };
}

function RollResult({ roll }: { roll: Roll }) {
  return (
    <span className="roll" data-total={roll.total}>
      {roll.expression}:{" "}
      {roll.terms.map((term, i) => (
        <span key={i}>
          {term.sign < 0 ? "- " : i > 0 ? "+ " : ""}
          {term.dice === undefined
            ? term.constant
            : `[${term.dice.map((die) => (die.kept ? String(die.value) : `(${die.value})`)).join(", ")}]`}{" "}
        </span>
      ))}
      = <b className="total">{roll.total}</b>
      {roll.label !== undefined && ` (${roll.label})`}
    </span>
  );
}

export function Chat({ messages, send }: { messages: readonly ChatMessage[]; send: (message: ChatSend) => boolean }) {
  const [text, setText] = useState("");

  function submit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    const said = text.trim();
    if (said !== "" && send(chatSend(said))) {
      setText("");
    }
  }

  return (
    <section>
      <h2 style={{ fontSize: 14 }}>Chat</h2>
      <ol className="chat" style={{ listStyle: "none", padding: 0, maxHeight: 360, overflowY: "auto" }}>
        {messages.map((message) => (
          <li key={message.id} className="chat-message" data-id={message.id} style={{ padding: "2px 0" }}>
            <b>{message.username ?? message.user_id}</b>
            {message.gm_only && " (to the GM)"}
            {message.recipient_id !== undefined && ` (whisper to ${message.recipient_id})`}:{" "}
            <span className="content">{typeof message.content === "string" ? message.content : JSON.stringify(message.content)}</span>
            {message.roll !== undefined && (
              <>
                <br />
                <RollResult roll={message.roll} />
              </>
            )}
          </li>
        ))}
      </ol>
      <form onSubmit={submit}>
        <input aria-label="Chat message" placeholder="say, or /roll 2d20kh1+5 # attack" value={text} onChange={(event) => setText(event.target.value)} />
        <button type="submit">Send</button>
      </form>
    </section>
  );
}
