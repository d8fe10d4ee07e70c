"use strict";
const $ = (id) => document.getElementById(id);
let socket = null, room = null, lastSeq = 0, epoch = 0, oldestSeq = 0, me = null, typingTimer = null, typingSentAt = 0;

async function api(path, options = {}) {
  const res = await fetch(path, { credentials: "same-origin", headers: { "content-type": "application/json" }, ...options });
  const body = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new Error(body && body.error ? body.error.message : res.statusText);
  return body;
}

function show(section) {
  for (const id of ["auth", "join", "chat"]) $(id).hidden = !section.includes(id);
}

function render(message, pending) {
  // Everything a user typed is inserted as text, never as HTML.
  const row = document.createElement("div");
  row.className = "msg" + (pending ? " pending" : "");
  if (message.client_id) row.dataset.clientId = message.client_id;
  if (message.seq) row.dataset.seq = message.seq;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = message.sent_at ? new Date(message.sent_at).toLocaleTimeString() : "…";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = message.user.name;
  const body = document.createElement("span");
  body.textContent = message.body;
  row.append(meta, name, body);
  return row;
}

function append(message) {
  if (message.seq <= lastSeq) return;
  lastSeq = message.seq;
  const pending = message.client_id && $("log").querySelector(`.pending[data-client-id="${CSS.escape(message.client_id)}"]`);
  if (pending) pending.remove();
  $("log").append(render(message));
  $("log").scrollTop = $("log").scrollHeight;
}

function prepend(messages, hasMore) {
  const first = $("log").firstChild;
  for (const m of messages) $("log").insertBefore(render(m), first);
  if (messages.length) oldestSeq = messages[0].seq;
  $("older").hidden = !hasMore;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const since = lastSeq ? `?since=${lastSeq}&epoch=${epoch}` : "";
  socket = new WebSocket(`${scheme}://${location.host}/ws/rooms/${encodeURIComponent(room)}${since}`);
  $("status").textContent = "connecting…";
  socket.onopen = () => { $("status").textContent = `in #${room}`; };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    switch (frame.type) {
      case "history":
        epoch = frame.epoch;
        if (frame.mode === "page") { prepend(frame.messages.slice().reverse(), frame.has_more); break; }
        if (frame.mode === "latest") {
          // A fresh load (first join, or the server asks for a reload): replace the view.
          $("log").textContent = ""; lastSeq = 0;
          oldestSeq = frame.messages.length ? frame.messages[0].seq : 0; $("older").hidden = !frame.has_more;
        }
        frame.messages.forEach(append);
        break;
      case "message": append(frame); break;
      case "ack": break;
      case "presence":
        $("online").textContent = "online: " + frame.online.map((u) => u.name).join(", ");
        break;
      case "typing":
        $("typing").textContent = `${frame.user.name} is typing…`;
        clearTimeout(typingTimer);
        typingTimer = setTimeout(() => { $("typing").textContent = ""; }, 3000);
        break;
      case "error": $("status").textContent = `error: ${frame.message}`; break;
    }
  };
  socket.onclose = (event) => {
    if (event.code === 4001) {
      // The session ended (logout here or elsewhere, revocation, expiry): log in again.
      room = null; me = null; $("who").textContent = ""; show(["auth"]);
      $("auth-error").textContent = "Your session ended; log in again.";
      return;
    }
    $("status").textContent = `disconnected (${event.code}); reconnecting…`;
    if (room) setTimeout(connect, 1000);
  };
}

$("auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const body = await api("/api/login", { method: "POST", body: JSON.stringify({ username: $("username").value, password: $("password").value }) });
    loggedIn(body.user);
  } catch (error) { $("auth-error").textContent = error.message; }
});

$("register").addEventListener("click", async () => {
  try {
    const credentials = JSON.stringify({ username: $("username").value, password: $("password").value });
    await api("/api/register", { method: "POST", body: credentials });
    const body = await api("/api/login", { method: "POST", body: credentials });
    loggedIn(body.user);
  } catch (error) { $("auth-error").textContent = error.message; }
});

$("logout").addEventListener("click", async () => {
  await api("/api/logout", { method: "POST" }).catch(() => {});
  room = null;
  if (socket) { socket.onclose = null; socket.close(); }
  me = null; $("who").textContent = ""; show(["auth"]);
});

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  room = $("room").value; lastSeq = 0;
  show(["join", "chat"]);
  if (socket) { socket.onclose = null; socket.close(); }
  connect();
});

$("older").addEventListener("click", () => {
  socket.send(JSON.stringify({ type: "history", before_seq: oldestSeq, limit: 50 }));
});

$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = $("body").value;
  if (!body.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
  const clientId = (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2));
  $("log").append(render({ user: { name: me.username }, body, client_id: clientId }, true));
  socket.send(JSON.stringify({ type: "send", body, client_id: clientId }));
  $("body").value = "";
});

$("body").addEventListener("input", () => {
  if (!socket || socket.readyState !== WebSocket.OPEN || Date.now() - typingSentAt < 2000) return;
  typingSentAt = Date.now();
  socket.send(JSON.stringify({ type: "typing" }));
});

function loggedIn(user) {
  me = user; $("who").textContent = `signed in as ${user.username}`; $("auth-error").textContent = "";
  show(["join"]);
}

api("/api/me").then(loggedIn).catch(() => show(["auth"]));
