// The chat as this client may see it: a full join's history, then live messages in seq order.
import type { ServerFrame } from "./protocol.ts";

type Message = ServerFrame<"chat.message">["payload"];
type History = ServerFrame<"chat.history">["payload"];

export interface ChatView {
  /** Oldest first: the last full join's history, then every message since, each id once. */
  readonly messages: readonly Message[];
  /** The server could not load the stored history: older messages may be missing. */
  readonly incomplete: boolean;
}

export const NO_CHAT: ChatView = Object.freeze({ messages: Object.freeze([]), incomplete: false });

/** The chat a full join starts with: its history replaces what we had (the role may have changed). */
export function chatFromHistory(history: History): ChatView {
  const seen = new Set<string>();
  const messages = history.messages.filter((message) => !seen.has(message.id) && seen.add(message.id));
  return { messages, incomplete: history.incomplete === true };
}

/** The chat with `message` appended; the same object when it already holds that id. */
export function withMessage(chat: ChatView, message: Message): ChatView {
  if (chat.messages.some((held) => held.id === message.id)) {
    return chat;
  }
  return { ...chat, messages: [...chat.messages, message] };
}
