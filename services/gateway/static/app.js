// Huddle's web client: accounts, rooms, the timeline, the composer with its outbox.
// Plain DOM, no framework. Everything a user typed reaches the page as text nodes only.
// The protocol it speaks is docs/PROTOCOL.md; the pure logic lives in core.js.
import {
  MAX_BODY_BYTES, ROOM_RE, TYPING_EVERY_MS, TYPING_TTL_MS, Timeline, applyPresence, backoffDelay, byteLength,
  closeReason, dayLabel, errorText, linkParts, normalizeRoom, parseRoute, relativeTime, roomHash,
  startsDay, startsGroup, typingText, unreadCount,
} from "/core.js";

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** How many older messages one page asks for. */
const PAGE_SIZE = 100;
/** Closer than this to the bottom counts as "at the bottom" (px). */
const BOTTOM_SLACK = 48;
/** Closer than this to the top loads the next older page (px). */
const TOP_SLACK = 400;

const S = {
  me: null,
  room: null,
  tl: new Timeline(),
  epoch: null,
  hasMore: false,
  viewGen: 0,
  loadingOlder: false,
  ws: null,
  wsGen: 0,
  joined: false,
  attempt: 0,
  reconnectAt: 0,
  reconnectTimer: 0,
  countdownTimer: 0,
  heartbeatTimer: 0,
  lastFrameAt: 0,
  online: [],
  typers: new Map(),
  lastMessageFrom: new Map(),
  outbox: [],
  newCount: 0,
  summaries: new Map(),
  directory: [],
  typingSentAt: 0,
  summaryTimer: 0,
};

// ---------------------------------------------------------------- storage

const store = {
  get(key, fallback) {
    try {
      const value = localStorage.getItem(key);
      return value === null ? fallback : JSON.parse(value);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch {
      // Storage full or disabled: the page works, it just forgets.
    }
  },
  remove(key) {
    try {
      localStorage.removeItem(key);
    } catch {
      // As above.
    }
  },
};
const userKey = (kind, room) => `huddle:${S.me.id}:${kind}${room ? `:${room}` : ""}`;

function myRooms() {
  return store.get(userKey("rooms"), []).filter((r) => ROOM_RE.test(r));
}
function rememberRoom(room) {
  store.set(userKey("rooms"), [room, ...myRooms().filter((r) => r !== room)].slice(0, 50));
}
function forgetRoom(room) {
  store.set(userKey("rooms"), myRooms().filter((r) => r !== room));
}
function lastRead(room) {
  return store.get(userKey("read", room), 0);
}
function setLastRead(room, seq) {
  store.set(userKey("read", room), seq);
}

// ---------------------------------------------------------------- REST

class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, {
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      ...options,
    });
  } catch {
    throw new ApiError(0, "network", "network error", 0);
  }
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = (body && body.error) || {};
    const retryAfter = Number(response.headers.get("retry-after")) || 0;
    throw new ApiError(response.status, error.code || `http_${response.status}`, error.message || response.statusText, retryAfter);
  }
  return body;
}

const roomPath = (room) => `/api/rooms/${encodeURIComponent(room)}/messages`;

// ---------------------------------------------------------------- accounts

async function authenticate(kind) {
  const username = $("username").value.trim();
  const password = $("password").value;
  const error = $("auth-error");
  error.textContent = "";
  $("username").removeAttribute("aria-invalid");
  $("password").removeAttribute("aria-invalid");
  $("auth-notice").hidden = true;
  if (!username) return invalid("username", "Enter your username.");
  if (!password) return invalid("password", "Enter your password.");
  if (kind === "register" && (password.length < 8 || password.length > 128)) return invalid("password", errorText("bad_password"));
  const busy = [$("login"), $("register")];
  busy.forEach((b) => (b.disabled = true));
  try {
    const credentials = JSON.stringify({ username, password });
    if (kind === "register") await api("/api/register", { method: "POST", body: credentials });
    const login = await api("/api/login", { method: "POST", body: credentials });
    $("password").value = "";
    signedIn(login.user);
  } catch (e) {
    const field = e.code === "bad_username" || e.code === "username_taken" ? "username" : e.code === "bad_password" ? "password" : null;
    if (field) $(field).setAttribute("aria-invalid", "true");
    error.textContent = errorText(e.code, e.message, e.retryAfter);
  } finally {
    busy.forEach((b) => (b.disabled = false));
  }

  function invalid(field, text) {
    $(field).setAttribute("aria-invalid", "true");
    error.textContent = text;
    $(field).focus();
  }
}

function signedIn(user) {
  S.me = { id: user.id, username: user.username };
  document.body.classList.remove("signed-out");
  $("auth-view").hidden = true;
  $("shell").hidden = false;
  $("account").hidden = false;
  $("who").textContent = user.username;
  $("lobby-name").textContent = user.username;
  $("auth-error").textContent = "";
  $("password").value = "";
  clearInterval(S.summaryTimer);
  S.summaryTimer = setInterval(() => {
    if (document.visibilityState === "visible") refreshDirectory();
  }, 20000);
  renderRoomLists();
  refreshDirectory();
  route();
}

/** Back to the login form (logout here, a session ended elsewhere, or expiry). */
function signedOut(notice) {
  disconnect();
  clearInterval(S.summaryTimer);
  S.me = null;
  S.room = null;
  S.tl = new Timeline();
  S.outbox = [];
  S.summaries.clear();
  document.body.classList.add("signed-out");
  $("shell").hidden = true;
  $("account").hidden = true;
  $("auth-view").hidden = false;
  $("who").textContent = "";
  $("messages").textContent = "";
  $("outbox").textContent = "";
  $("password").value = "";
  $("auth-notice").hidden = !notice;
  $("auth-notice").textContent = notice || "";
  setConn("idle", "Not connected");
  document.title = "Huddle";
  $("username").focus();
}

async function logout() {
  // The socket closes first: nothing can be sent as this user after the click.
  disconnect();
  let notice = "You logged out.";
  try {
    await api("/api/logout", { method: "POST" });
  } catch (e) {
    if (e.status !== 401) notice = "You logged out on this page, but the server could not be told; your session may still be open elsewhere.";
  }
  signedOut(notice);
}

// ---------------------------------------------------------------- routing

function route() {
  if (!S.me) return;
  const r = parseRoute(location.hash);
  if (r.view === "room") openRoom(r.room);
  else openLobby();
}

function openLobby() {
  leaveRoom();
  $("shell").dataset.view = "lobby";
  $("lobby-view").hidden = false;
  $("room-view").hidden = true;
  $("people").hidden = true;
  setConn("idle", "Not in a room");
  refreshDirectory();
  updateUnread();
}

function openRoom(room) {
  if (S.room === room) return;
  leaveRoom();
  S.room = room;
  S.tl = new Timeline();
  S.epoch = null;
  S.hasMore = false;
  S.viewGen++;
  S.attempt = 0;
  S.newCount = 0;
  S.online = [];
  S.typers.clear();
  S.outbox = store.get(userKey("outbox", room), []).filter((e) => e && e.client_id && typeof e.body === "string");
  rememberRoom(room);
  $("shell").dataset.view = "room";
  $("lobby-view").hidden = true;
  $("room-view").hidden = false;
  $("people").hidden = !wide();
  $("people-toggle").setAttribute("aria-expanded", String(!$("people").hidden));
  $("room-title").textContent = `#${room}`;
  $("body-label").textContent = `Message #${room}`;
  $("body").placeholder = `Message #${room}`;
  $("body").value = store.get(userKey("draft", room), "");
  $("messages").textContent = "";
  $("history-status").textContent = "Loading messages…";
  $("older").hidden = true;
  $("new-pill").hidden = true;
  renderOutbox();
  renderPresence();
  renderTyping();
  updateComposerHint();
  renderRoomLists();
  connect();
}

function leaveRoom() {
  disconnect();
  S.room = null;
  S.typers.forEach((t) => clearTimeout(t.timer));
  S.typers.clear();
}

const wide = () => window.matchMedia("(min-width: 1100px)").matches;

// ---------------------------------------------------------------- connection

function setConn(state, text) {
  $("conn").dataset.state = state;
  $("conn-text").textContent = text;
  $("reconnect-now").hidden = state !== "reconnecting";
}

function disconnect() {
  S.wsGen++;
  clearTimeout(S.reconnectTimer);
  clearInterval(S.countdownTimer);
  clearInterval(S.heartbeatTimer);
  S.joined = false;
  if (S.ws) {
    const ws = S.ws;
    S.ws = null;
    try {
      ws.close(1000);
    } catch {
      // Already closing.
    }
  }
}

function connect() {
  clearTimeout(S.reconnectTimer);
  clearInterval(S.countdownTimer);
  const room = S.room;
  if (!room || !S.me) return;
  const gen = ++S.wsGen;
  const params = new URLSearchParams();
  if (S.tl.size && S.epoch !== null) {
    params.set("since", String(S.tl.maxSeq));
    params.set("epoch", String(S.epoch));
  }
  const query = params.toString() ? `?${params}` : "";
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let ws;
  try {
    ws = new WebSocket(`${scheme}://${location.host}/ws/rooms/${encodeURIComponent(room)}${query}`);
  } catch {
    scheduleReconnect("Can't open a connection");
    return;
  }
  S.ws = ws;
  S.joined = false;
  let opened = false;
  setConn("connecting", S.attempt ? "Reconnecting…" : "Connecting…");
  ws.onopen = () => {
    if (gen !== S.wsGen) return;
    opened = true;
    S.lastFrameAt = Date.now();
    // Unacked messages go again with the same client_id: the server stored each at
    // most once and answers a resend of a stored one with its original seq.
    flushOutbox();
    startHeartbeat(ws, gen);
  };
  ws.onmessage = (event) => {
    if (gen !== S.wsGen) return;
    S.lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    onFrame(frame);
  };
  ws.onclose = (event) => {
    if (gen !== S.wsGen) return;
    S.ws = null;
    clearInterval(S.heartbeatTimer);
    onDisconnected(event.code, opened);
  };
}

function startHeartbeat(ws, gen) {
  clearInterval(S.heartbeatTimer);
  S.heartbeatTimer = setInterval(() => {
    if (gen !== S.wsGen) return;
    const quiet = Date.now() - S.lastFrameAt;
    if (quiet > 45000) {
      // No frame, not even a pong, for 45 s: the connection is dead without a close.
      S.wsGen++;
      S.ws = null;
      clearInterval(S.heartbeatTimer);
      try {
        ws.close();
      } catch {
        // Nothing to close.
      }
      onDisconnected(1006, true);
    } else if (quiet > 20000 && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "ping" }));
    }
  }, 5000);
}

async function onDisconnected(code, opened) {
  S.joined = false;
  S.typers.forEach((t) => clearTimeout(t.timer));
  S.typers.clear();
  renderTyping();
  renderOutbox();
  if (code === 4001) {
    signedOut("Your session ended: you logged out in another tab or window, or it expired. Log in again.");
    return;
  }
  let reason = closeReason(code);
  if (!opened) {
    // A refused upgrade looks like a lost connection to the page: ask the API why.
    const gen = S.wsGen;
    setConn("reconnecting", "Connection failed; checking…");
    const session = await probeSession();
    if (gen !== S.wsGen || !S.me) return;
    if (session === "expired") {
      signedOut("Your session has expired. Log in again.");
      return;
    }
    if (session === "unreachable") reason = navigator.onLine === false ? "You're offline" : "Can't reach the server";
    else if (session === "troubled") reason = "The server is having trouble";
    else reason = "The room isn't available right now";
  }
  scheduleReconnect(reason, code === 1011 || code === 4008 ? 2000 : 0);
}

async function probeSession() {
  try {
    await api("/api/me");
    return "ok";
  } catch (e) {
    if (e.status === 401) return "expired";
    return e.status >= 500 ? "troubled" : "unreachable";
  }
}

function scheduleReconnect(reason, minimum = 0) {
  clearTimeout(S.reconnectTimer);
  clearInterval(S.countdownTimer);
  const delay = Math.max(minimum, backoffDelay(S.attempt));
  S.attempt++;
  S.reconnectAt = Date.now() + delay;
  const tick = () => {
    const seconds = Math.max(1, Math.ceil((S.reconnectAt - Date.now()) / 1000));
    setConn("reconnecting", `${reason}. Reconnecting in ${seconds} s…`);
  };
  tick();
  S.countdownTimer = setInterval(tick, 1000);
  S.reconnectTimer = setTimeout(connect, delay);
}

function reconnectNow() {
  if (S.room && !S.ws) {
    S.attempt = 0;
    connect();
  }
}

// ---------------------------------------------------------------- frames

function onFrame(frame) {
  switch (frame.type) {
    case "history": return onHistory(frame);
    case "message": return onMessages([frame]);
    case "ack": return markSent(frame.client_id);
    case "presence":
      S.online = applyPresence(S.online, frame);
      renderPresence();
      return renderRoomListsSoon();
    case "typing": return onTyping(frame.user);
    case "error": return onError(frame);
    default: return undefined;
  }
}

function onHistory(frame) {
  if (frame.epoch !== undefined) S.epoch = frame.epoch;
  const messages = Array.isArray(frame.messages) ? frame.messages : [];
  if (frame.mode === "page") {
    prependOlder(messages, frame.has_more);
  } else if (frame.mode === "latest") {
    // A fresh view: on join, or when the server lost messages we had seen.
    S.viewGen++;
    S.loadingOlder = false;
    const added = S.tl.replace(messages);
    S.hasMore = Boolean(frame.has_more);
    renderAll();
    reconcile(added);
    const read = lastRead(S.room);
    if (!read || read > S.tl.maxSeq) setLastRead(S.room, S.tl.maxSeq);
    const line = read && read < S.tl.maxSeq && S.tl.has(read + 1) ? unreadLine(read + 1) : null;
    if (line) {
      // Back in a room with unread messages: a line marks where they start, and the
      // view opens there (or at the bottom, if they all fit).
      scrollToBottom();
      const t = timeline();
      t.scrollTop = Math.min(t.scrollTop, line.offsetTop - t.clientHeight / 3);
      updatePill();
    } else {
      scrollToBottom();
    }
    fillViewport();
  } else {
    onMessages(messages);
  }
  if (!S.joined) {
    S.joined = true;
    S.attempt = 0;
    setConn("connected", `Connected to #${S.room}`);
    renderOutbox();
  }
  updateHistoryTop();
  markRead();
}

function onMessages(messages) {
  const stick = atBottom();
  const added = S.tl.addNewer(messages);
  if (!added.length) return;
  appendNewer(added);
  reconcile(added);
  for (const m of added) {
    S.lastMessageFrom.set(m.user.id, Date.now());
    if (S.typers.has(m.user.id)) {
      clearTimeout(S.typers.get(m.user.id).timer);
      S.typers.delete(m.user.id);
    }
  }
  renderTyping();
  updateHistoryTop();
  if (stick) {
    scrollToBottom();
  } else {
    S.newCount += added.filter((m) => m.user.id !== S.me.id).length;
    updatePill();
  }
  markRead();
  updateUnread();
}

function onTyping(user) {
  if (!user || user.id === S.me.id) return;
  // A notice that trails its author's message by less than a second is stale.
  if (Date.now() - (S.lastMessageFrom.get(user.id) || 0) < 1000) return;
  const old = S.typers.get(user.id);
  if (old) clearTimeout(old.timer);
  const timer = setTimeout(() => {
    S.typers.delete(user.id);
    renderTyping();
  }, TYPING_TTL_MS);
  S.typers.set(user.id, { name: user.name, timer });
  renderTyping();
}

function onError(frame) {
  const entry = frame.client_id && S.outbox.find((e) => e.client_id === frame.client_id);
  if (entry) {
    entry.state = "failed";
    entry.error = errorText(frame.code, frame.message);
    saveOutbox();
    renderOutbox();
  }
  // Refused typing notices and pings need no words.
}

// ---------------------------------------------------------------- timeline

const timeline = () => $("timeline");

function atBottom() {
  const t = timeline();
  return t.scrollHeight - t.scrollTop - t.clientHeight < BOTTOM_SLACK;
}

function scrollToBottom() {
  const t = timeline();
  t.scrollTop = t.scrollHeight;
  S.newCount = 0;
  updatePill();
}

function timeText(iso) {
  return new Date(iso).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

function daySeparator(message) {
  const li = el("li", "day");
  li.dataset.day = message.sent_at;
  li.append(el("h3", "day-label", dayLabel(message.sent_at)));
  return li;
}

function bodyNode(text) {
  const body = el("div", "body");
  for (const part of linkParts(text)) {
    if (part.href) {
      const a = el("a", "", part.text);
      a.href = part.href;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      body.append(a);
    } else {
      body.append(document.createTextNode(part.text));
    }
  }
  return body;
}

function messageNode(message, previous) {
  const mine = S.me && message.user.id === S.me.id;
  const li = el("li", "msg");
  li.dataset.seq = String(message.seq);
  li.dataset.userId = String(message.user.id);
  if (message.client_id) li.dataset.clientId = message.client_id;
  if (mine) li.classList.add("mine");
  if (!startsGroup(previous, message)) li.classList.add("cont");
  const head = el("div", "msg-head");
  head.append(el("span", "name", message.user.name));
  if (mine) head.append(el("span", "you", "you"));
  const time = el("time", "time", timeText(message.sent_at));
  time.dateTime = message.sent_at;
  time.title = new Date(message.sent_at).toLocaleString();
  head.append(time);
  li.append(head, bodyNode(message.body));
  return li;
}

/** The "New" line before the message with `seq`; returns it. */
function unreadLine(seq) {
  const node = $("messages").querySelector(`.msg[data-seq="${seq}"]`);
  if (!node) return null;
  const line = el("li", "unread-line");
  line.append(el("span", "", "New"));
  const separator = node.previousElementSibling;
  (separator && separator.classList.contains("day") ? separator : node).before(line);
  return line;
}

function renderAll() {
  const list = $("messages");
  const fragment = document.createDocumentFragment();
  let previous;
  for (const m of S.tl.messages()) {
    if (startsDay(previous, m)) fragment.append(daySeparator(m));
    fragment.append(messageNode(m, previous));
    previous = m;
  }
  list.replaceChildren(fragment);
}

function appendNewer(added) {
  const list = $("messages");
  for (const m of added) {
    const previous = S.tl.before(m.seq);
    if (startsDay(previous, m)) list.append(daySeparator(m));
    list.append(messageNode(m, previous));
  }
}

/** Older messages go above the ones held, and the reader stays where they were. */
function prependOlder(messages, hasMore) {
  const oldFirst = S.tl.size ? S.tl.get(S.tl.minSeq) : undefined;
  const added = S.tl.addOlder(messages);
  S.hasMore = Boolean(hasMore) && added.length > 0;
  if (!added.length) return updateHistoryTop();
  const list = $("messages");
  const t = timeline();
  const fromBottom = t.scrollHeight - t.scrollTop;
  const fragment = document.createDocumentFragment();
  let previous;
  for (const m of added) {
    if (startsDay(previous, m)) fragment.append(daySeparator(m));
    fragment.append(messageNode(m, previous));
    previous = m;
  }
  if (oldFirst) {
    // The message that was first now has a predecessor: it may join its group and day.
    const node = list.querySelector(`.msg[data-seq="${oldFirst.seq}"]`);
    if (node) {
      const separator = node.previousElementSibling;
      if (separator && separator.classList.contains("day") && !startsDay(previous, oldFirst)) separator.remove();
      node.classList.toggle("cont", !startsGroup(previous, oldFirst));
    }
  }
  list.prepend(fragment);
  t.scrollTop = t.scrollHeight - fromBottom;
  updateHistoryTop();
}

async function loadOlder() {
  if (S.loadingOlder || !S.hasMore || !S.room || !S.tl.size) return;
  S.loadingOlder = true;
  const gen = S.viewGen;
  const room = S.room;
  $("history-status").textContent = "Loading older messages…";
  $("older").hidden = true;
  try {
    const page = await api(`${roomPath(room)}?before=${S.tl.minSeq}&limit=${PAGE_SIZE}`);
    if (gen !== S.viewGen || room !== S.room) return;
    S.loadingOlder = false;
    prependOlder(page.messages || [], page.has_more);
  } catch (e) {
    if (gen !== S.viewGen) return;
    S.loadingOlder = false;
    if (e.status === 401) return signedOut("Your session has expired. Log in again.");
    $("history-status").textContent = `Couldn't load older messages. ${errorText(e.code, e.message, e.retryAfter)}`;
    $("older").hidden = false;
    $("older").textContent = "Try again";
    return;
  }
  fillViewport();
}

/** Loads older pages while the reader is near the top (or nothing scrolls yet). */
function fillViewport() {
  if (S.hasMore && timeline().scrollTop < TOP_SLACK) setTimeout(loadOlder, 0);
}

function updateHistoryTop() {
  const status = $("history-status");
  const older = $("older");
  if (S.loadingOlder) return;
  older.textContent = "Show older messages";
  if (S.hasMore) {
    older.hidden = false;
    status.textContent = "";
  } else {
    older.hidden = true;
    status.textContent = S.tl.size ? `This is the beginning of #${S.room}.` : S.joined ? `No messages in #${S.room} yet. Say hello!` : "Loading messages…";
  }
}

function updatePill() {
  const pill = $("new-pill");
  const t = timeline();
  const far = t.scrollHeight - t.scrollTop - t.clientHeight > t.clientHeight;
  if (atBottom()) S.newCount = 0;
  if (S.newCount > 0) {
    pill.textContent = `${S.newCount} new message${S.newCount === 1 ? "" : "s"} ↓`;
    pill.hidden = false;
  } else if (far) {
    pill.textContent = "Jump to latest ↓";
    pill.hidden = false;
  } else {
    pill.hidden = true;
  }
}

function markRead() {
  if (!S.room || !S.tl.size || document.visibilityState !== "visible" || !atBottom()) return updateUnread();
  if (lastRead(S.room) !== S.tl.maxSeq) setLastRead(S.room, S.tl.maxSeq);
  updateUnread();
}

// ---------------------------------------------------------------- outbox

function saveOutbox() {
  if (!S.room) return;
  const key = userKey("outbox", S.room);
  if (S.outbox.length) store.set(key, S.outbox.map(({ client_id, body, state, error }) => ({ client_id, body, state, error })));
  else store.remove(key);
}

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sendMessage() {
  const input = $("body");
  const body = input.value;
  if (!body.trim()) return;
  if (byteLength(body) > MAX_BODY_BYTES) {
    updateComposerHint();
    input.focus();
    return;
  }
  const entry = { client_id: newClientId(), body, state: "pending" };
  S.outbox.push(entry);
  saveOutbox();
  input.value = "";
  store.remove(userKey("draft", S.room));
  updateComposerHint();
  renderOutbox();
  transmit(entry);
  scrollToBottom();
}

function transmit(entry) {
  if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
  S.ws.send(JSON.stringify({ type: "send", body: entry.body, client_id: entry.client_id }));
  return true;
}

function flushOutbox() {
  for (const entry of S.outbox) if (entry.state === "pending") transmit(entry);
}

function markSent(clientId) {
  const i = S.outbox.findIndex((e) => e.client_id === clientId);
  if (i < 0) return;
  S.outbox.splice(i, 1);
  saveOutbox();
  renderOutbox();
}

/** Messages of ours that the server has: their outbox entries are done. */
function reconcile(messages) {
  const ids = new Set(messages.filter((m) => m.user.id === S.me.id && m.client_id).map((m) => m.client_id));
  if (!ids.size) return;
  const before = S.outbox.length;
  S.outbox = S.outbox.filter((e) => !ids.has(e.client_id));
  if (S.outbox.length !== before) {
    saveOutbox();
    renderOutbox();
  }
}

function renderOutbox() {
  const list = $("outbox");
  const connected = S.joined && S.ws && S.ws.readyState === WebSocket.OPEN;
  list.replaceChildren(
    ...S.outbox.map((entry) => {
      const li = el("li", `msg mine ${entry.state}`);
      li.dataset.clientId = entry.client_id;
      li.dataset.state = entry.state;
      const head = el("div", "msg-head");
      head.append(el("span", "name", S.me ? S.me.username : ""), el("span", "you", "you"));
      li.append(head, bodyNode(entry.body));
      const status = el("div", "send-state");
      if (entry.state === "failed") {
        status.append(el("span", "error", `Not sent: ${entry.error || "refused by the server"}`));
        const retry = el("button", "link-button", "Retry");
        retry.type = "button";
        retry.className = "link-button retry";
        retry.addEventListener("click", () => {
          entry.state = "pending";
          entry.error = null;
          saveOutbox();
          renderOutbox();
          transmit(entry);
        });
        const discard = el("button", "link-button discard", "Discard");
        discard.type = "button";
        discard.addEventListener("click", () => {
          S.outbox = S.outbox.filter((e) => e !== entry);
          saveOutbox();
          renderOutbox();
          $("body").focus();
        });
        status.append(retry, discard);
      } else {
        status.append(el("span", "muted", connected ? "Sending…" : "Waiting for the connection; it will be sent when it's back"));
      }
      li.append(status);
      return li;
    }),
  );
}

function updateComposerHint() {
  const hint = $("composer-hint");
  const bytes = byteLength($("body").value);
  hint.classList.remove("error");
  $("body").removeAttribute("aria-invalid");
  if (bytes > MAX_BODY_BYTES) {
    hint.textContent = `Too long: ${bytes} of at most ${MAX_BODY_BYTES} bytes. Shorten it to send.`;
    hint.classList.add("error");
    $("body").setAttribute("aria-invalid", "true");
  } else if (bytes > MAX_BODY_BYTES - 500) {
    hint.textContent = `${bytes} of ${MAX_BODY_BYTES} bytes`;
  } else {
    hint.textContent = "Enter sends · Shift+Enter adds a line";
  }
}

// ---------------------------------------------------------------- people, typing

function renderPresence() {
  const list = $("online");
  const people = [...S.online].sort((a, b) => (S.me && a.id === S.me.id ? -1 : S.me && b.id === S.me.id ? 1 : a.id - b.id));
  list.replaceChildren(
    ...people.map((user) => {
      const li = el("li", "person");
      li.dataset.userId = String(user.id);
      li.append(el("span", "dot", ""), el("span", "name", user.name));
      if (S.me && user.id === S.me.id) li.append(el("span", "you", "you"));
      return li;
    }),
  );
  $("people-toggle").textContent = `${S.online.length} online`;
}

function renderTyping() {
  $("typing").textContent = typingText([...S.typers.values()].map((t) => t.name));
}

// ---------------------------------------------------------------- rooms

async function refreshDirectory() {
  if (!S.me) return;
  const status = $("directory-status");
  if (!S.directory.length) status.textContent = "Loading rooms…";
  try {
    const { rooms, directory } = await api("/api/rooms");
    S.directory = Array.isArray(rooms) ? rooms : [];
    // Each room's newest seq, last activity and people online, in one request.
    for (const entry of Array.isArray(directory) ? directory : []) {
      S.summaries.set(entry.name, { lastSeq: entry.last_seq, lastAt: entry.last_message_at, online: entry.online });
    }
    status.textContent = S.directory.length ? "" : "No rooms yet: name one above to create it.";
    renderRoomLists();
  } catch (e) {
    if (e.status === 401) return signedOut("Your session has expired. Log in again.");
    status.textContent = `Couldn't load the rooms. ${errorText(e.code, e.message, e.retryAfter)}`;
  }
}

function summaryOf(room) {
  if (room === S.room && S.tl.size) {
    const last = S.tl.get(S.tl.maxSeq);
    return { lastSeq: last.seq, lastAt: last.sent_at };
  }
  return S.summaries.get(room);
}

function unreadOf(room) {
  const summary = summaryOf(room);
  return summary ? unreadCount(summary.lastSeq, lastRead(room)) : 0;
}

function roomItem(room, { mine }) {
  const li = el("li", "room-item");
  li.dataset.room = room;
  const a = el("a", "room-link");
  a.href = roomHash(room);
  if (room === S.room) a.setAttribute("aria-current", "page");
  a.append(el("span", "room-name", `#${room}`));
  const summary = summaryOf(room);
  const meta = [];
  if (room === S.room) meta.push(`${S.online.length} online`);
  else if (summary && summary.online) meta.push(`${summary.online} online`);
  if (summary && summary.lastAt) meta.push(`active ${relativeTime(summary.lastAt)}`);
  else if (summary) meta.push("no messages yet");
  const unsent = mine && room !== S.room ? store.get(userKey("outbox", room), []).length : 0;
  if (unsent) meta.push(`${unsent} not sent yet`);
  if (meta.length) a.append(el("span", "room-meta", meta.join(" · ")));
  const unread = mine ? unreadOf(room) : 0;
  if (unread > 0 && room !== S.room) {
    const badge = el("span", "badge");
    badge.append(el("span", "", unread > 99 ? "99+" : String(unread)), el("span", "visually-hidden", " unread"));
    a.append(badge);
  }
  li.append(a);
  if (mine) {
    const remove = el("button", "link-button forget", "×");
    remove.type = "button";
    remove.title = `Remove #${room} from your rooms`;
    remove.setAttribute("aria-label", `Remove #${room} from your rooms`);
    remove.addEventListener("click", () => {
      forgetRoom(room);
      renderRoomLists();
    });
    li.append(remove);
  }
  return li;
}

function renderRoomLists() {
  if (!S.me) return;
  const mine = myRooms();
  $("my-rooms").replaceChildren(...mine.map((r) => roomItem(r, { mine: true })));
  $("my-rooms-empty").hidden = mine.length > 0;
  const others = S.directory.filter((r) => !mine.includes(r));
  $("directory").replaceChildren(...others.map((r) => roomItem(r, { mine: false })));
  if (S.directory.length && !others.length) $("directory-status").textContent = "You are in every room.";
  else if (others.length) $("directory-status").textContent = "";
  updateUnread();
}

function updateUnread() {
  if (!S.me) return;
  let total = 0;
  for (const room of myRooms()) if (room !== S.room || document.visibilityState !== "visible" || !atBottom()) total += unreadOf(room);
  const where = S.room ? `#${S.room}` : "Rooms";
  document.title = `${total ? `(${total}) ` : ""}${where} · Huddle`;
  for (const li of $("my-rooms").children) {
    const room = li.dataset.room;
    const badge = li.querySelector(".badge");
    const unread = room === S.room ? 0 : unreadOf(room);
    if (!badge && unread > 0) renderRoomListsSoon();
    else if (badge) {
      if (unread > 0) badge.firstChild.textContent = unread > 99 ? "99+" : String(unread);
      else badge.remove();
    }
  }
}

let relistPending = false;
function renderRoomListsSoon() {
  if (relistPending) return;
  relistPending = true;
  queueMicrotask(() => {
    relistPending = false;
    renderRoomLists();
  });
}

function joinFromForm(event) {
  event.preventDefault();
  const input = $("room-name");
  const room = normalizeRoom(input.value);
  const error = $("join-error");
  if (!ROOM_RE.test(room)) {
    error.textContent = room ? errorText("bad_room") : "Type a room name.";
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  error.textContent = "";
  input.removeAttribute("aria-invalid");
  input.value = "";
  location.hash = roomHash(room);
}

// ---------------------------------------------------------------- wiring

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  authenticate("login");
});
$("register").addEventListener("click", () => authenticate("register"));
$("logout").addEventListener("click", logout);
$("join-form").addEventListener("submit", joinFromForm);
$("directory-refresh").addEventListener("click", refreshDirectory);
$("reconnect-now").addEventListener("click", reconnectNow);
$("older").addEventListener("click", loadOlder);
$("new-pill").addEventListener("click", () => {
  scrollToBottom();
  markRead();
  timeline().focus();
});
$("people-toggle").addEventListener("click", () => {
  const people = $("people");
  people.hidden = !people.hidden;
  $("people-toggle").setAttribute("aria-expanded", String(!people.hidden));
});
timeline().addEventListener("scroll", () => {
  if (timeline().scrollTop < TOP_SLACK) loadOlder();
  updatePill();
  if (atBottom()) markRead();
});
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});
$("body").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    sendMessage();
  }
});
$("body").addEventListener("input", () => {
  const value = $("body").value;
  if (S.room) {
    if (value) store.set(userKey("draft", S.room), value);
    else store.remove(userKey("draft", S.room));
  }
  updateComposerHint();
  if (value.trim() && S.joined && S.ws && S.ws.readyState === WebSocket.OPEN && Date.now() - S.typingSentAt > TYPING_EVERY_MS) {
    S.typingSentAt = Date.now();
    S.ws.send(JSON.stringify({ type: "typing" }));
  }
});
window.addEventListener("hashchange", route);
window.addEventListener("online", reconnectNow);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") markRead();
});
window.matchMedia("(min-width: 1100px)").addEventListener("change", () => {
  if (S.room) {
    $("people").hidden = !wide();
    $("people-toggle").setAttribute("aria-expanded", String(!$("people").hidden));
  }
});

api("/api/me")
  .then((user) => signedIn({ id: user.id, username: user.username }))
  .catch(() => signedOut(""));
