// The web client in a real browser (Debian's headless Chromium) against a running
// gateway. Run by tests/e2e/tests/browser.rs, which starts the services and sets:
//   HUDDLE_URL                the gateway the pages use
//   HUDDLE_CONTROL            POST /gateway/stop and /gateway/start of that gateway
//   HUDDLE_BIG_ROOM, _COUNT   a room seeded with that many messages ("message i of N")
//   HUDDLE_BROWSER_ARTIFACTS  where screenshots go
// The gateway sends at most 1 message a second per account, bursts of 8.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { chromium } from "playwright-core";

const base = process.env.HUDDLE_URL;
const control = process.env.HUDDLE_CONTROL;
const bigRoom = process.env.HUDDLE_BIG_ROOM;
const bigCount = Number(process.env.HUDDLE_BIG_COUNT || 0);
const artifacts = process.env.HUDDLE_BROWSER_ARTIFACTS ?? "/tmp/huddle-browser-artifacts";
const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const NARROW = { width: 360, height: 740 };

let browser;
const contexts = [];
// Page exceptions and console errors of every page. A refused connection while the
// gateway is down is expected (and only logged by the browser); anything else is not.
const problems = [];

before(async () => {
  assert.ok(base, "HUDDLE_URL must point at a running gateway");
  mkdirSync(artifacts, { recursive: true });
  browser = await chromium.launch({
    executablePath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
});

after(async () => {
  await browser?.close();
});

async function newPage({ viewport = DESKTOP, colorScheme = "light", context } = {}) {
  if (!context) {
    context = await browser.newContext({ viewport, colorScheme });
    contexts.push(context);
    // Every Content Security Policy violation of the page, from its very start.
    await context.addInitScript(() => {
      window.__csp = [];
      document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective}: ${e.blockedURI}`));
    });
  }
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on("console", (message) => {
    const text = message.text();
    if (message.type() === "error" && !/WebSocket connection|Failed to load resource/.test(text)) problems.push(`${page.url()}: ${text}`);
  });
  page.on("pageerror", (error) => problems.push(`${page.url()}: ${error}`));
  return page;
}

/** Fails on CSP violations in `pages`, then closes every context opened so far. */
async function finish(...pages) {
  for (const page of pages) {
    if (page.isClosed()) continue;
    assert.deepEqual(await page.evaluate(() => window.__csp), [], `no CSP violations on ${page.url()}`);
  }
  assert.deepEqual(problems, [], "no page errors");
  while (contexts.length) await contexts.pop().close();
}

async function register(page, name) {
  await page.goto(base);
  await page.fill("#username", name);
  await page.fill("#password", "password123");
  await page.click("#register");
  await page.waitForSelector("#shell:not([hidden])");
}

async function logIn(page, name) {
  await page.goto(base);
  await page.waitForSelector("#auth-view:not([hidden])");
  await page.fill("#username", name);
  await page.fill("#password", "password123");
  await page.press("#password", "Enter");
  await page.waitForSelector("#shell:not([hidden])");
}

async function enter(page, room) {
  await page.fill("#room-name", room);
  await page.press("#room-name", "Enter");
  await connected(page, room);
}

async function connected(page, room) {
  await page.waitForFunction((r) => document.getElementById("conn-text").textContent === `Connected to #${r}`, room);
}

async function say(page, text) {
  await page.fill("#body", text);
  await page.press("#body", "Enter");
}

/** Seqs and bodies of the messages a page shows, in order. */
const shown = (page) =>
  page.$$eval("#messages .msg", (nodes) => nodes.map((n) => ({ seq: Number(n.dataset.seq), body: n.querySelector(".body").textContent, mine: n.classList.contains("mine"), cont: n.classList.contains("cont") })));
const bodies = async (page) => (await shown(page)).map((m) => m.body);

async function untilShown(page, body) {
  await page.waitForFunction((b) => [...document.querySelectorAll("#messages .msg .body")].some((n) => n.textContent === b), body);
}

async function gateway(command) {
  const response = await fetch(`${control}/gateway/${command}`, { method: "POST" });
  assert.equal(response.status, 200, `gateway ${command}: ${await response.text()}`);
}

function consecutive(seqs) {
  return seqs.every((s, i) => i === 0 || s === seqs[i - 1] + 1);
}

test("accounts: inline errors, register, log in with the password cleared, log out closes the socket", async () => {
  const page = await newPage();
  await page.goto(base);
  await page.click("#login");
  assert.equal(await page.textContent("#auth-error"), "Enter your username.");
  assert.equal(await page.getAttribute("#username", "aria-invalid"), "true");
  await page.fill("#username", "ada");
  await page.fill("#password", "short");
  await page.click("#register");
  assert.match(await page.textContent("#auth-error"), /8–128 characters/);
  await page.fill("#password", "password123");
  await page.click("#register");
  await page.waitForSelector("#shell:not([hidden])");
  assert.equal(await page.inputValue("#password"), "", "the password is not kept in the page");
  assert.equal(await page.textContent("#who"), "ada");
  assert.ok(await page.isHidden("#auth-view"));

  // Log out from the lobby, then a wrong password, then the right one, by keyboard only.
  await page.click("#logout");
  await page.waitForSelector("#auth-view:not([hidden])");
  assert.equal(await page.evaluate(() => document.activeElement.id), "username", "the login form has the focus");
  assert.equal(await page.inputValue("#username"), "ada", "the name is kept for the next login");
  await page.keyboard.press("End");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.id), "password");
  await page.keyboard.type("wrong-password");
  await page.keyboard.press("Enter");
  await page.waitForSelector('#auth-error:has-text("Wrong username or password.")');
  await page.fill("#password", "password123");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#shell:not([hidden])");
  assert.equal(await page.inputValue("#password"), "");
  assert.equal(await page.textContent("#auth-error"), "");

  // In a room, logging out closes the socket (the page closes it, not the server's
  // 4001 a moment later) and ends the session on the server.
  const closes = [];
  let sockets = 0;
  await page.routeWebSocket(/\/ws\/rooms\//, (ws) => {
    sockets++;
    const server = ws.connectToServer();
    ws.onClose((code) => {
      closes.push(`page ${code}`);
      server.close();
    });
    server.onClose((code) => {
      closes.push(`server ${code}`);
      ws.close({ code });
    });
  });
  await enter(page, "lobby");
  assert.equal(sockets, 1);
  await page.click("#logout");
  await page.waitForSelector('#auth-notice:has-text("You logged out.")');
  assert.equal(closes[0], "page 1000", `the page closed its socket: ${closes}`);
  assert.equal(await page.evaluate(() => fetch("/api/me").then((r) => r.status)), 401, "signed out on the server too");
  await page.waitForTimeout(800);
  assert.equal(sockets, 1, "no new socket after logout");
  await finish(page);
});

test("two people chat live: messages, presence, typing; a third joins from the room directory", async () => {
  const alice = await newPage();
  const bob = await newPage();
  await register(alice, "alice");
  await register(bob, "bob");
  await enter(alice, "lobby");
  await enter(bob, "lobby");
  await alice.waitForSelector('#online .person:has-text("bob")');
  await bob.waitForSelector('#online .person:has-text("alice")');
  assert.equal(await alice.textContent("#people-toggle"), "2 online");

  await say(alice, "hello bob");
  await untilShown(bob, "hello bob");
  await say(alice, "are you there?");
  await untilShown(bob, "are you there?");
  let seen = await shown(bob);
  assert.deepEqual(seen.slice(-2).map((m) => [m.body, m.mine, m.cont]), [["hello bob", false, false], ["are you there?", false, true]], "grouped by author, not bob's own");
  // Alice's page shows her message once its ack or broadcast reaches it, which can be
  // after bob's page already has it.
  await untilShown(alice, "are you there?");
  assert.deepEqual((await shown(alice)).slice(-2).map((m) => m.mine), [true, true], "alice's own messages are marked");
  assert.ok(consecutive(seen.map((m) => m.seq)));
  assert.match(await bob.textContent("#messages .day"), /Today/, "a day separator");

  // Typing: named, and gone the moment the typer's message arrives.
  await bob.fill("#body", "yes, ");
  await bob.type("#body", "here");
  await alice.waitForSelector('#typing:has-text("bob is typing…")');
  await bob.press("#body", "Enter");
  await untilShown(alice, "yes, here");
  assert.equal(await alice.textContent("#typing"), "", "the typing line clears when bob's message arrives");

  // Bodies are text: markup stays text, only http(s) URLs become links, built safely.
  const markup = '<img src=x onerror="window.pwned = 1"> <b>bold?</b>';
  await say(bob, markup);
  await untilShown(alice, markup);
  assert.equal(await alice.locator("#messages .msg img, #messages .msg b").count(), 0, "a body never becomes HTML");
  assert.equal(await alice.evaluate(() => window.pwned), undefined);
  const linked = "docs at https://example.com/a_(b)?x=1. not javascript:alert(1) nor <a href=https://x.example>x</a>";
  await say(bob, linked);
  await untilShown(alice, linked);
  const links = await alice.$$eval("#messages .msg:last-child .body a", (as) => as.map((a) => [a.getAttribute("href"), a.rel, a.target, a.textContent]));
  assert.deepEqual(links, [
    ["https://example.com/a_(b)?x=1", "noopener noreferrer", "_blank", "https://example.com/a_(b)?x=1"],
    ["https://x.example/", "noopener noreferrer", "_blank", "https://x.example"],
  ]);

  // Shift+Enter is a new line; Enter sends both lines as one message.
  await alice.fill("#body", "line one");
  await alice.press("#body", "Shift+Enter");
  await alice.type("#body", "line two");
  assert.equal(await alice.inputValue("#body"), "line one\nline two");
  await alice.press("#body", "Enter");
  await untilShown(bob, "line one\nline two");
  assert.equal(await alice.inputValue("#body"), "");

  // Too long for the server: held back in the composer, with the reason.
  await alice.fill("#body", "é".repeat(2001));
  await alice.waitForSelector('#composer-hint:has-text("Too long: 4002 of at most 4000 bytes")');
  await alice.press("#body", "Enter");
  assert.equal(await alice.locator("#outbox .msg").count(), 0, "not sent");
  assert.equal(await alice.inputValue("#body"), "é".repeat(2001), "and not lost");
  await alice.fill("#body", "");

  // A third person finds the room in the directory.
  const carol = await newPage();
  await register(carol, "carol");
  await carol.waitForSelector('#directory .room-link:has-text("#lobby")');
  // Before she joins, the directory says who is there and that the room is active.
  await carol.waitForSelector('#directory .room-link:has-text("#lobby") .room-meta:has-text("2 online")');
  assert.match(await carol.textContent('#directory .room-link:has-text("#lobby") .room-meta'), /active /);
  await carol.click('#directory .room-link:has-text("#lobby")');
  await connected(carol, "lobby");
  assert.equal(new URL(carol.url()).hash, "#/rooms/lobby");
  assert.deepEqual(await bodies(carol), await bodies(alice), "carol sees the same history");
  for (const page of [alice, bob, carol]) await page.waitForSelector('#people-toggle:has-text("3 online")');
  await alice.waitForSelector('#online .person:has-text("carol")');

  // Two typers at once, and the line clears within seconds when they stop.
  // Each sends a notice at most every few seconds while typing.
  const typed = Promise.all([alice.type("#body", "hmm, let me think", { delay: 250 }), carol.type("#body", "well, maybe", { delay: 300 })]);
  await bob.waitForFunction(() => /^(alice and carol|carol and alice) are typing…$/.test(document.getElementById("typing").textContent));
  await bob.screenshot({ path: path.join(artifacts, "conversation-desktop-light.png") });
  await typed;
  const started = Date.now();
  await bob.waitForFunction(() => document.getElementById("typing").textContent === "", null, { timeout: 8000 });
  assert.ok(Date.now() - started < 6000, "the typing line cleared within seconds");

  // Leaving is seen by the others.
  await bob.close();
  await alice.waitForSelector('#people-toggle:has-text("2 online")');
  assert.equal(await alice.locator('#online .person:has-text("bob")').count(), 0);
  await finish(alice, carol);
});

test("rooms: a URL per room, back and forward, reload, drafts per room, unread badge and tab title", async () => {
  const dana = await newPage();
  const erin = await newPage();
  await register(dana, "dana");
  await register(erin, "erin");
  await enter(erin, "general");
  await enter(dana, "general");
  assert.equal(new URL(dana.url()).hash, "#/rooms/general");
  await say(erin, "welcome to general");
  await untilShown(dana, "welcome to general");
  await dana.fill("#body", "half-written thought");
  await enter(dana, "random");
  assert.equal(new URL(dana.url()).hash, "#/rooms/random");
  assert.equal(await dana.inputValue("#body"), "", "each room has its own draft");

  await dana.goBack();
  await connected(dana, "general");
  assert.equal(await dana.textContent("#room-title"), "#general");
  assert.equal(await dana.inputValue("#body"), "half-written thought", "the draft is kept");
  await untilShown(dana, "welcome to general");
  await dana.goForward();
  await connected(dana, "random");
  await dana.reload();
  await connected(dana, "random");
  assert.equal(await dana.textContent("#room-title"), "#random");

  // Two messages in general while dana is elsewhere: a badge and the tab title say so.
  await say(erin, "news one");
  await say(erin, "news two");
  await untilShown(erin, "news two");
  await dana.goto(`${base}/#/`);
  await dana.waitForSelector('#my-rooms .room-item[data-room="general"] .badge:has-text("2")');
  assert.match(await dana.title(), /^\(2\) /);
  await dana.click('#my-rooms .room-link:has-text("#general")');
  await connected(dana, "general");
  await untilShown(dana, "news two");
  assert.equal(await dana.$eval("#messages .unread-line", (line) => line.nextElementSibling.querySelector(".body").textContent), "news one", "a line marks where the unread messages start");
  await dana.waitForFunction(() => !/^\(\d+\)/.test(document.title));
  assert.equal(await dana.title(), "#general · Huddle");
  assert.equal(await dana.inputValue("#body"), "half-written thought", "the draft survives a reload too");
  await finish(dana, erin);
});

test(`history: scrolled to the top of ${bigCount} messages, every seq once, in order; the reader stays in place`, async () => {
  assert.ok(bigRoom && bigCount >= 1000, "the harness seeds a big room");
  const reader = await newPage();
  const writer = await newPage();
  await register(reader, "reader");
  await register(writer, "writer");
  await enter(reader, bigRoom);
  let seqs = (await shown(reader)).map((m) => m.seq);
  assert.deepEqual([seqs[0], seqs.at(-1)], [bigCount - 99, bigCount], "a join shows the newest 100");

  for (let round = 0; round < 300; round++) {
    const done = await reader.evaluate(() => {
      const status = document.getElementById("history-status").textContent;
      if (status.startsWith("This is the beginning")) return true;
      document.getElementById("timeline").scrollTop = 0;
      return false;
    });
    if (done) break;
    await reader.waitForTimeout(100);
  }
  const state = await reader.evaluate(() => ({ status: document.getElementById("history-status").textContent, older: !document.getElementById("older").hidden, top: document.getElementById("timeline").scrollTop, count: document.querySelectorAll("#messages .msg").length, first: document.querySelector("#messages .msg")?.dataset.seq }));
  assert.match(state.status, /^This is the beginning/, JSON.stringify(state));
  const all = await shown(reader);
  assert.equal(all.length, bigCount, "every message, none twice");
  assert.deepEqual(all.map((m) => m.seq), Array.from({ length: bigCount }, (_, i) => i + 1), "seq 1..N in order");
  assert.ok(all.every((m) => m.body === `message ${m.seq} of ${bigCount}`), "each body where its seq says");
  assert.equal(await reader.locator("#messages .day").count(), 1, "one day, one separator");

  // Reading the oldest messages: a new one does not move the view; a pill offers it.
  await reader.evaluate(() => (document.getElementById("timeline").scrollTop = 200));
  const top = await reader.evaluate(() => document.getElementById("timeline").scrollTop);
  await enter(writer, bigRoom);
  await say(writer, "fresh news");
  await untilShown(reader, "fresh news");
  await reader.waitForSelector('#new-pill:has-text("1 new message")');
  assert.equal(await reader.evaluate(() => document.getElementById("timeline").scrollTop), top, "the reader stays in place");
  assert.match(await reader.title(), /^\(1\) #/, "the tab title counts the unread message");
  await reader.click("#new-pill");
  assert.ok(await reader.evaluate(() => { const t = document.getElementById("timeline"); return t.scrollHeight - t.scrollTop - t.clientHeight < 48; }), "jumped to the latest");
  await reader.waitForSelector("#new-pill", { state: "hidden" });
  assert.equal(await reader.title(), `#${bigRoom} · Huddle`);
  await finish(reader, writer);
});

test("outage: a lost ack is resent with the same client_id; the gateway restarts; typed messages arrive once; a refused one can be retried", async () => {
  const fay = await newPage();
  const gus = await newPage();
  // Fay's socket passes through the test, which can lose an ack as a network would.
  const sent = [];
  let lose = null; // the body whose ack and echo get lost, then the connection
  await fay.routeWebSocket(/\/ws\/rooms\//, (ws) => {
    const server = ws.connectToServer();
    let losing = null;
    ws.onMessage((data) => {
      const frame = JSON.parse(data);
      if (frame.type === "send") {
        sent.push(frame);
        if (frame.body === lose) losing = frame.client_id;
      }
      server.send(data);
    });
    server.onMessage((data) => {
      const frame = JSON.parse(data);
      if (losing && frame.client_id === losing && (frame.type === "ack" || frame.type === "message")) {
        if (frame.type === "ack") {
          lose = losing = null;
          ws.close({ code: 1012, reason: "lost" });
          server.close();
        }
        return;
      }
      ws.send(data);
    });
  });
  await register(fay, "fay");
  await register(gus, "gus");
  await enter(fay, "outage");
  await enter(gus, "outage");

  lose = "stored, ack lost";
  await say(fay, "stored, ack lost");
  await untilShown(gus, "stored, ack lost");
  await fay.waitForSelector("#conn[data-state=reconnecting]");
  await connected(fay, "outage");
  await untilShown(fay, "stored, ack lost");
  await fay.waitForSelector("#outbox .msg", { state: "detached" });
  const tries = sent.filter((f) => f.body === "stored, ack lost");
  assert.equal(tries.length, 2, "sent, then resent after the reconnect");
  assert.equal(tries[1].client_id, tries[0].client_id, "resent with the same client_id");
  await say(gus, "got it");
  await untilShown(fay, "got it");
  for (const page of [fay, gus]) {
    assert.equal((await bodies(page)).filter((b) => b === "stored, ack lost").length, 1, "no duplicate");
  }

  // The gateway goes away mid-conversation.
  await gateway("stop");
  for (const page of [fay, gus]) {
    await page.waitForFunction(() => /^[A-Z].*\. Reconnecting in \d+ s…$/.test(document.getElementById("conn-text").textContent));
  }
  const during = ["typed during the outage", "and another one"];
  for (const body of during) await say(fay, body);
  assert.equal(await fay.locator('#outbox .msg[data-state="pending"]').count(), 2);
  assert.match(await fay.textContent("#outbox"), /Waiting for the connection/);
  await fay.screenshot({ path: path.join(artifacts, "outage-desktop-light.png") });
  await fay.waitForTimeout(1500);
  await gateway("start");
  await connected(fay, "outage");
  await connected(gus, "outage");
  for (const body of during) await untilShown(gus, body);
  await fay.waitForSelector("#outbox .msg", { state: "detached" });
  for (const page of [fay, gus]) {
    const messages = await shown(page);
    for (const body of during) assert.equal(messages.filter((m) => m.body === body).length, 1, `"${body}" exactly once`);
    assert.ok(consecutive(messages.map((m) => m.seq)), "no gap");
    assert.equal(messages[0].seq, 1);
  }

  // Sending faster than the gateway allows: refused messages show as failed.
  const burst = Array.from({ length: 12 }, (_, i) => `burst ${i + 1}`);
  for (const body of burst) await say(fay, body);
  await fay.waitForFunction(() => document.querySelectorAll('#outbox .msg[data-state="pending"]').length === 0 && document.querySelectorAll("#outbox .msg").length > 0);
  const failed = await fay.$$eval('#outbox .msg[data-state="failed"]', (ns) => ns.map((n) => n.querySelector(".body").textContent));
  assert.ok(failed.length >= 1, "some of the burst was refused");
  assert.match(await fay.textContent('#outbox .msg[data-state="failed"]'), /Not sent: You're sending too fast/);
  await fay.screenshot({ path: path.join(artifacts, "refused-desktop-light.png") });
  // Discard all but the first failed one; retry that one.
  while ((await fay.locator('#outbox .msg[data-state="failed"]').count()) > 1) await fay.click('#outbox .msg[data-state="failed"]:last-child .discard');
  await fay.waitForTimeout(1500);
  await fay.click('#outbox .msg[data-state="failed"] .retry');
  await fay.waitForSelector("#outbox .msg", { state: "detached" });
  await untilShown(gus, failed[0]);
  const delivered = (await bodies(gus)).filter((b) => b.startsWith("burst "));
  assert.equal(delivered.length, burst.length - failed.length + 1, "the refused ones were not stored, the retried one once");
  assert.equal(new Set(delivered).size, delivered.length);
  for (const body of failed.slice(1)) assert.ok(!delivered.includes(body), `discarded "${body}" was not sent`);
  await finish(fay, gus);
});

test("a session ended in another tab lands on the login form, without reconnecting", async () => {
  const tab = await newPage();
  await register(tab, "hal");
  const other = await newPage({ context: tab.context() });
  await other.goto(`${base}/#/rooms/lobby`);
  await connected(other, "lobby");
  let opened = 0;
  other.on("websocket", () => opened++);
  await tab.click("#logout");
  await other.waitForSelector("#auth-view:not([hidden])");
  assert.match(await other.textContent("#auth-notice"), /Your session ended/);
  assert.equal(await other.textContent("#conn-text"), "Not connected");
  await other.waitForTimeout(1500);
  assert.equal(opened, 0, "no reconnect with an ended session");
  await finish(tab, other);
});

async function axe(page, label) {
  await page.evaluate(`${axeSource}\n;true`);
  const violations = await page.evaluate(async () => (await window.axe.run(document, { resultTypes: ["violations"] })).violations);
  const serious = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(serious.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`), [], `axe on ${label}`);
}

async function noHorizontalOverflow(page, label) {
  const overflow = await page.evaluate(() => {
    const width = window.innerWidth;
    // Past the right edge, or wider inside than outside (text that does not wrap, even
    // where an ancestor clips it).
    const wide = [...document.querySelectorAll("body *")].filter((e) => {
      const r = e.getBoundingClientRect();
      if (!(r.width > 0 && r.height > 0)) return false;
      return r.right > width + 1 || (e.clientWidth > 1 && e.scrollWidth > e.clientWidth + 1);
    });
    return { scroll: document.documentElement.scrollWidth, width, wide: wide.slice(0, 5).map((e) => `${e.tagName}.${e.className}`) };
  });
  assert.ok(overflow.scroll <= overflow.width, `${label}: page is ${overflow.scroll} px wide in ${overflow.width}`);
  assert.deepEqual(overflow.wide, [], `${label}: elements past the right edge`);
}

test("phone and desktop, light and dark: screenshots, no sideways scrolling with a 22-character name, no serious axe violations", async () => {
  const name = "a_very_long_username_x";
  assert.equal(name.length, 22);
  const room = "a-room-with-a-rather-long-name-that-goes-on-and-on";
  let registered = false;
  for (const colorScheme of ["light", "dark"]) {
    for (const [device, viewport] of [["phone", PHONE], ["narrow", NARROW], ["desktop", DESKTOP]]) {
      const page = await newPage({ viewport, colorScheme });
      const shot = (view) => (device === "narrow" ? null : page.screenshot({ path: path.join(artifacts, `${view}-${device}-${colorScheme}.png`) }));
      await page.goto(base);
      await page.waitForSelector("#auth-view:not([hidden])");
      await page.fill("#username", name);
      await shot("login");
      await noHorizontalOverflow(page, `login ${device}`);
      await axe(page, `login, ${device}, ${colorScheme}`);

      await page.fill("#password", "password123");
      await page.click(registered ? "#login" : "#register");
      registered = true;
      await page.waitForSelector("#shell:not([hidden])");
      // The directory, with each room's last activity.
      await page.waitForFunction(() => {
        const rooms = document.querySelectorAll("#directory .room-link");
        return rooms.length > 0 && [...rooms].every((a) => a.querySelector(".room-meta"));
      });
      await shot("lobby");
      await noHorizontalOverflow(page, `lobby ${device}`);
      await axe(page, `lobby, ${device}, ${colorScheme}`);

      await page.goto(`${base}/#/rooms/${room}`);
      await connected(page, room);
      if (!(await bodies(page)).length) {
        await say(page, `a word that does not end: ${"x".repeat(300)}`);
        await say(page, `a link that does not end: https://example.com/${"y".repeat(200)}`);
        await page.fill("#body", "and a message over");
        await page.press("#body", "Shift+Enter");
        await page.type("#body", "two lines");
        await page.press("#body", "Enter");
        await page.waitForFunction(() => document.querySelectorAll("#messages .msg").length === 3);
      }
      await page.fill("#body", "a draft, being written");
      await shot("room");
      await noHorizontalOverflow(page, `room ${device}`);
      await axe(page, `room, ${device}, ${colorScheme}`);
      if (viewport !== DESKTOP) {
        await page.click("#people-toggle");
        await page.waitForSelector("#people:not([hidden])");
        await noHorizontalOverflow(page, `people ${device}`);
        await axe(page, `people, ${device}, ${colorScheme}`);
      }
      await finish(page);
    }
  }
});

test("no page errors and no Content Security Policy violations anywhere", () => {
  assert.deepEqual(problems, []);
});
