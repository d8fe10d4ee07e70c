// The web client's logic that needs no page: the timeline of one room (messages by
// seq), links, grouping, typing lines, back-off, and the words for codes. app.js uses
// it in the browser; tests/browser/core.test.mjs tests it under node.

/** Bodies are at most this many bytes of UTF-8 (docs/PROTOCOL.md, `send`). */
export const MAX_BODY_BYTES = 4000;
/** Messages of one author closer together than this share one header. */
export const GROUP_GAP_MS = 5 * 60 * 1000;
/** A typer is forgotten this long after their last typing notice. */
export const TYPING_TTL_MS = 4000;
/** Typing notices go out at most this often while the user types. */
export const TYPING_EVERY_MS = 2500;
/** Room names are slugs (docs/PROTOCOL.md, Conventions). */
export const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;

export function byteLength(text) {
  return new TextEncoder().encode(text).length;
}

/**
 * The messages of one room that the page holds, by seq, in order, each once. History
 * pages are added below the smallest seq held, live messages above the largest.
 */
export class Timeline {
  constructor() {
    this.bySeq = new Map();
    this.order = []; // seqs, ascending
  }
  get size() {
    return this.order.length;
  }
  get minSeq() {
    return this.order.length ? this.order[0] : 0;
  }
  get maxSeq() {
    return this.order.length ? this.order[this.order.length - 1] : 0;
  }
  has(seq) {
    return this.bySeq.has(seq);
  }
  get(seq) {
    return this.bySeq.get(seq);
  }
  /** The message held just before `seq` (in order), or undefined. */
  before(seq) {
    const i = this.indexOf(seq);
    return i > 0 ? this.bySeq.get(this.order[i - 1]) : undefined;
  }
  indexOf(seq) {
    let lo = 0, hi = this.order.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.order[mid] === seq) return mid;
      if (this.order[mid] < seq) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
  }
  messages() {
    return this.order.map((seq) => this.bySeq.get(seq));
  }
  /** Replaces everything (a `latest` history). Returns the messages now held. */
  replace(messages) {
    this.bySeq.clear();
    this.order = [];
    return this.addNewer(messages);
  }
  /** Adds messages newer than any held (live, `since`); returns those added, in order. */
  addNewer(messages) {
    const added = [];
    for (const m of [...messages].sort((a, b) => a.seq - b.seq)) {
      if (!Number.isInteger(m.seq) || m.seq <= this.maxSeq || this.bySeq.has(m.seq)) continue;
      this.bySeq.set(m.seq, m);
      this.order.push(m.seq);
      added.push(m);
    }
    return added;
  }
  /** Adds messages older than any held (a history page); returns those added, in order. */
  addOlder(messages) {
    const min = this.order.length ? this.minSeq : Infinity;
    const added = [...messages]
      .filter((m) => Number.isInteger(m.seq) && m.seq < min && !this.bySeq.has(m.seq))
      .sort((a, b) => a.seq - b.seq);
    const unique = added.filter((m, i) => i === 0 || added[i - 1].seq !== m.seq);
    for (const m of unique) this.bySeq.set(m.seq, m);
    this.order = unique.map((m) => m.seq).concat(this.order);
    return unique;
  }
}

/** Local calendar day of an RFC 3339 time, as a sortable key. */
export function dayKey(iso) {
  const d = new Date(iso);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

/** "Today", "Yesterday" or the date, for a day separator. */
export function dayLabel(iso, now = new Date()) {
  const key = dayKey(iso);
  if (key === dayKey(now.toISOString())) return "Today";
  const yesterday = new Date(now);
  yesterday.setDate(now.getDate() - 1);
  if (key === dayKey(yesterday.toISOString())) return "Yesterday";
  const d = new Date(iso);
  const options = { weekday: "long", month: "long", day: "numeric" };
  if (d.getFullYear() !== now.getFullYear()) options.year = "numeric";
  return d.toLocaleDateString(undefined, options);
}

/** Whether `message` starts a new group (shows its author and time) after `previous`. */
export function startsGroup(previous, message) {
  if (!previous) return true;
  if (previous.user.id !== message.user.id) return true;
  if (dayKey(previous.sent_at) !== dayKey(message.sent_at)) return true;
  return Date.parse(message.sent_at) - Date.parse(previous.sent_at) > GROUP_GAP_MS;
}

/** Whether a day separator goes before `message`. */
export function startsDay(previous, message) {
  return !previous || dayKey(previous.sent_at) !== dayKey(message.sent_at);
}

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;

/**
 * A body cut into text and links: `{text}` or `{text, href}` parts. Only http and https
 * URLs become links; trailing punctuation stays text. The page builds them with DOM
 * calls (text nodes, `a.href`), so nothing in a body is ever parsed as HTML.
 */
export function linkParts(body) {
  const parts = [];
  let last = 0;
  for (const match of body.matchAll(URL_RE)) {
    let candidate = match[0];
    // Trailing punctuation ends a sentence, not the URL; a ")" only if unbalanced.
    while (/[.,;:!?'"\]}>)]$/.test(candidate)) {
      if (candidate.endsWith(")")) {
        const opens = (candidate.match(/\(/g) || []).length;
        const closes = (candidate.match(/\)/g) || []).length;
        if (opens >= closes) break;
      }
      candidate = candidate.slice(0, -1);
    }
    let url;
    try {
      url = new URL(candidate);
    } catch {
      continue;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") continue;
    if (match.index > last) parts.push({ text: body.slice(last, match.index) });
    parts.push({ text: candidate, href: url.href });
    last = match.index + candidate.length;
  }
  if (last < body.length) parts.push({ text: body.slice(last) });
  return parts;
}

/**
 * Who is online after a `presence` frame: a `snapshot` replaces the list; `joined` adds
 * its one user and `left` removes them (by id, so a repeat changes nothing).
 */
export function applyPresence(online, frame) {
  if (frame.event === "snapshot") return Array.isArray(frame.online) ? [...frame.online] : [];
  const user = frame.user;
  if (!user || typeof user.id !== "number") return online;
  const others = online.filter((person) => person.id !== user.id);
  if (frame.event === "joined") return [...others, { id: user.id, name: user.name }].sort((a, b) => a.id - b.id);
  if (frame.event === "left") return others;
  return online;
}

/** The typing line for these names ("" when nobody types). */
export function typingText(names) {
  switch (names.length) {
    case 0: return "";
    case 1: return `${names[0]} is typing…`;
    case 2: return `${names[0]} and ${names[1]} are typing…`;
    case 3: return `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
    default: return `${names[0]}, ${names[1]} and ${names.length - 2} others are typing…`;
  }
}

/**
 * How long to wait before reconnect attempt `attempt` (0 first): exponential from
 * 500 ms, capped at 15 s, with "equal jitter" (half fixed, half random) so that many
 * clients dropped at once do not come back at once.
 */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(15000, 500 * 2 ** Math.min(attempt, 10));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** What a close code means to the person using the page (docs/PROTOCOL.md, Close codes). */
export function closeReason(code) {
  switch (code) {
    case 1000: case 1001: case 1005: return "The connection was closed";
    case 1006: return "The connection was lost";
    case 1008: return "The connection timed out";
    case 1009: return "A message was too large for the server";
    case 1011: return "The server can't serve this room right now";
    case 1012: return "The server is restarting";
    case 4001: return "Your session ended";
    case 4008: return "The connection fell behind";
    default: return "The connection was lost";
  }
}

/** Human words for an error code of the REST API or the socket. */
export function errorText(code, message, retryAfter) {
  const wait = retryAfter ? ` Try again in ${retryAfter} s.` : " Try again in a moment.";
  switch (code) {
    case "bad_credentials": return "Wrong username or password.";
    case "username_taken": return "That name, or one that looks like it, is taken. Pick another.";
    case "bad_username": return "Usernames are 3–32 letters, digits, “_”, “-” or “.”.";
    case "bad_password": return "Passwords are 8–128 characters.";
    case "rate_limited": return retryAfter ? `Too many attempts.${wait}` : "You're sending too fast. Wait a moment, then retry.";
    case "login_locked": return `Too many wrong passwords: this account's logins are paused.${wait}`;
    case "overloaded": return `The server is busy.${wait}`;
    case "unavailable": return `The server can't reach its storage right now.${wait}`;
    case "session_expired": return "Your session has expired. Log in again.";
    case "unauthorized": return "Please log in.";
    case "origin_not_allowed": return "This page may not talk to that server (origin not allowed).";
    case "body_too_long": return `Too long: messages are at most ${MAX_BODY_BYTES} bytes.`;
    case "empty_body": return "The message is empty.";
    case "bad_body": return "The message holds a character that can't be stored.";
    case "bad_room": return "Room names are 1–64 lowercase letters, digits, “-” or “_”, starting with a letter or digit.";
    case "network": return "Can't reach the server. Check your connection and try again.";
    default: return message || "Something went wrong.";
  }
}

/** The route of a location hash: the lobby, or one room (`#/rooms/<name>`). */
export function parseRoute(hash) {
  const match = /^#\/rooms\/([^/?#]+)$/.exec(hash || "");
  if (match) {
    let room;
    try {
      room = decodeURIComponent(match[1]);
    } catch {
      return { view: "lobby" };
    }
    if (ROOM_RE.test(room)) return { view: "room", room };
  }
  return { view: "lobby" };
}

export function roomHash(room) {
  return `#/rooms/${encodeURIComponent(room)}`;
}

/** A typed room name made into a slug where that is obvious ("#Team 42" → "team-42"). */
export function normalizeRoom(input) {
  return input.trim().replace(/^#/, "").toLowerCase().replace(/\s+/g, "-");
}

/** "just now", "5 min ago", "3 h ago", "yesterday", or the date. */
export function relativeTime(iso, now = Date.now()) {
  const seconds = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  if (seconds < 2 * 86400) return "yesterday";
  return new Date(iso).toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

/** Unread messages: seqs above the last one read (0 if the room went back). */
export function unreadCount(lastSeq, lastRead) {
  return Math.max(0, (lastSeq || 0) - (lastRead || 0));
}
