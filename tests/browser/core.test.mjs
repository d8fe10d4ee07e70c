// The page's logic without a page (services/gateway/static/core.js), under node.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Timeline, applyPresence, backoffDelay, byteLength, closeReason, errorText, linkParts, normalizeRoom, parseRoute,
  roomHash, startsDay, startsGroup, typingText, unreadCount,
} from "../../services/gateway/static/core.js";

const msg = (seq, user = 1, sent_at = "2026-11-24T06:12:01Z") => ({ seq, user: { id: user, name: `u${user}` }, body: `m${seq}`, sent_at });
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test("paging a room of 250 from the newest 100 down to seq 1 holds each seq once, in order", () => {
  const tl = new Timeline();
  tl.replace(range(151, 250).map((s) => msg(s)));
  let pages = 0;
  while (tl.minSeq > 1) {
    // What the server answers to before=minSeq&limit=50: oldest first.
    const before = tl.minSeq;
    const page = range(Math.max(1, before - 50), before - 1).map((s) => msg(s));
    const added = tl.addOlder(page);
    assert.deepEqual(added.map((m) => m.seq), page.map((m) => m.seq));
    pages++;
  }
  assert.equal(pages, 3);
  assert.deepEqual(tl.messages().map((m) => m.seq), range(1, 250));
  // The same page twice, or one that overlaps, adds nothing twice.
  assert.deepEqual(tl.addOlder(range(1, 60).map((s) => msg(s))), []);
  assert.deepEqual(tl.addNewer(range(240, 252).map((s) => msg(s))).map((m) => m.seq), [251, 252]);
  assert.deepEqual(tl.addNewer([msg(252)]), []);
  assert.equal(tl.size, 252);
  assert.equal(tl.before(100).seq, 99);
  assert.equal(tl.before(1), undefined);
  tl.replace([msg(7)]);
  assert.deepEqual(tl.messages().map((m) => m.seq), [7]);
});

test("links: only http and https, trailing punctuation stays text, the rest is text", () => {
  assert.deepEqual(linkParts("see https://example.com/a_(b)?x=1. ok"), [
    { text: "see " },
    { text: "https://example.com/a_(b)?x=1", href: "https://example.com/a_(b)?x=1" },
    { text: ". ok" },
  ]);
  assert.deepEqual(linkParts("(http://x.org/p)"), [{ text: "(" }, { text: "http://x.org/p", href: "http://x.org/p" }, { text: ")" }]);
  for (const body of ["javascript:alert(1)", "data:text/html,<b>x</b>", "ftp://x.org", "<a href=https>x</a>", ""]) {
    assert.ok(linkParts(body).every((p) => !p.href), body);
    assert.equal(linkParts(body).map((p) => p.text).join(""), body);
  }
  const body = "a https://a.example b http://b.example/?q=<c> c";
  assert.equal(linkParts(body).map((p) => p.text).join(""), body, "the parts are the body, whole");
  assert.equal(linkParts(body).filter((p) => p.href).length, 2);
});

test("typing lines name up to three typers", () => {
  assert.equal(typingText([]), "");
  assert.equal(typingText(["ada"]), "ada is typing…");
  assert.equal(typingText(["ada", "bob"]), "ada and bob are typing…");
  assert.equal(typingText(["ada", "bob", "cy"]), "ada, bob and cy are typing…");
  assert.equal(typingText(["ada", "bob", "cy", "di", "ed"]), "ada, bob and 3 others are typing…");
});

test("reconnect back-off grows exponentially, is capped, and is jittered", () => {
  assert.equal(backoffDelay(0, () => 0), 250);
  assert.equal(backoffDelay(0, () => 1), 500);
  assert.equal(backoffDelay(3, () => 0), 2000);
  assert.equal(backoffDelay(3, () => 1), 4000);
  assert.equal(backoffDelay(50, () => 1), 15000);
  assert.equal(backoffDelay(50, () => 0), 7500);
  const draws = new Set(Array.from({ length: 20 }, () => backoffDelay(4)));
  assert.ok(draws.size > 1, "jitter spreads the attempts");
});

test("close codes and error codes become words, never numbers", () => {
  for (const code of [1000, 1001, 1005, 1006, 1008, 1009, 1011, 1012, 4001, 4008, 4999]) {
    const text = closeReason(code);
    assert.ok(text.length > 5 && !/\d/.test(text), `${code}: ${text}`);
  }
  assert.match(closeReason(1012), /restarting/);
  assert.match(closeReason(4001), /session/);
  assert.match(errorText("rate_limited"), /too fast/);
  assert.match(errorText("login_locked", "", 4), /4 s/);
  assert.equal(errorText("something_new", "the server's words"), "the server's words");
});

test("routes: one hash per room; anything else is the lobby", () => {
  assert.deepEqual(parseRoute("#/rooms/lobby"), { view: "room", room: "lobby" });
  assert.deepEqual(parseRoute(roomHash("team-42")), { view: "room", room: "team-42" });
  for (const hash of ["", "#", "#/", "#/rooms/", "#/rooms/Bad", "#/rooms/a%2Fb", "#/rooms/%E0%A4%A", "#/rooms/-x"]) {
    assert.deepEqual(parseRoute(hash), { view: "lobby" }, hash);
  }
  assert.equal(normalizeRoom("  #Team 42 "), "team-42");
});

test("groups: same author within five minutes on one day; days apart", () => {
  const a = msg(1, 1, "2026-11-24T06:12:01Z");
  assert.equal(startsGroup(undefined, a), true);
  assert.equal(startsGroup(a, msg(2, 1, "2026-11-24T06:16:01Z")), false);
  assert.equal(startsGroup(a, msg(2, 2, "2026-11-24T06:12:02Z")), true);
  assert.equal(startsGroup(a, msg(2, 1, "2026-11-24T06:17:02Z")), true);
  assert.equal(startsDay(a, msg(2, 1, "2026-11-24T06:13:00Z")), false);
  assert.equal(startsDay(a, msg(2, 1, "2026-11-27T06:13:00Z")), true);
});

test("bytes and unread counts", () => {
  assert.equal(byteLength("é€😀"), 2 + 3 + 4);
  assert.equal(unreadCount(10, 7), 3);
  assert.equal(unreadCount(3, 7), 0);
  assert.equal(unreadCount(5, undefined), 5);
});

test("presence: a snapshot replaces the list, joined and left change one user by id", () => {
  const ada = { id: 1, name: "ada" }, bob = { id: 2, name: "bob" }, cy = { id: 3, name: "cy" };
  let online = applyPresence([cy], { type: "presence", event: "snapshot", online: [ada, cy] });
  assert.deepEqual(online, [ada, cy]);
  online = applyPresence(online, { type: "presence", event: "joined", user: bob });
  assert.deepEqual(online, [ada, bob, cy]);
  assert.deepEqual(applyPresence(online, { type: "presence", event: "joined", user: bob }), [ada, bob, cy]);
  online = applyPresence(online, { type: "presence", event: "left", user: ada });
  assert.deepEqual(online, [bob, cy]);
  assert.deepEqual(applyPresence(online, { type: "presence", event: "left", user: ada }), [bob, cy]);
  assert.deepEqual(applyPresence(online, { type: "presence", event: "joined" }), [bob, cy]);
});
