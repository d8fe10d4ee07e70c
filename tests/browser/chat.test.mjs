// The web client in a real browser (Debian's headless Chromium) against a running
// gateway: two people chat live, history survives a reload, bodies render as text.
// Run by tests/e2e/tests/browser.rs, which starts the services and sets HUDDLE_URL.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const base = process.env.HUDDLE_URL;
const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

// Every console error and page exception, so a Content Security Policy violation (the
// page runs with no 'unsafe-inline') fails the test instead of passing unnoticed.
const pageErrors = [];
function watch(page) {
  page.on("console", (message) => {
    if (message.type() === "error" && !message.text().includes("WebSocket")) pageErrors.push(message.text());
  });
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  return page;
}

async function register(page, name) {
  await page.goto(base);
  await page.fill("#username", name);
  await page.fill("#password", "password123");
  await page.click("#register");
  await page.waitForSelector("#join:not([hidden])");
}

async function join(page, room) {
  await page.fill("#room", room);
  await page.click("#join-form button[type=submit]");
  await page.waitForSelector(`#status:has-text("in #${room}")`);
}

async function say(page, text) {
  await page.fill("#body", text);
  await page.press("#body", "Enter");
}

test("two people chat live, history survives a reload, bodies render as text", async () => {
  assert.ok(base, "HUDDLE_URL must point at a running gateway");
  const browser = await chromium.launch({
    executablePath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  try {
    const ada = watch(await (await browser.newContext()).newPage());
    const bobContext = await browser.newContext();
    const bob = watch(await bobContext.newPage());
    await register(ada, "ada");
    await register(bob, "bob");
    await join(ada, "lobby");
    await join(bob, "lobby");

    await say(ada, "hello bob");
    await bob.waitForSelector('.msg[data-seq="1"]:has-text("hello bob")');

    const markup = '<img src=x onerror="window.pwned = 1"> <b>bold?</b>';
    await say(bob, markup);
    await ada.waitForSelector('.msg[data-seq="2"]');
    assert.equal(await ada.textContent('.msg[data-seq="2"] span:last-child'), markup);
    assert.equal(await ada.locator(".msg img, .msg b").count(), 0, "a body must never become HTML");
    assert.equal(await ada.evaluate(() => window.pwned), undefined);

    // A reload keeps the session (cookie) and the history.
    await ada.reload();
    await ada.waitForSelector("#join:not([hidden])");
    await join(ada, "lobby");
    await ada.waitForSelector('.msg[data-seq="2"]');
    assert.deepEqual(await ada.locator(".msg span:last-child").allTextContents(), ["hello bob", markup]);
    await ada.screenshot({ path: process.env.HUDDLE_SCREENSHOT ?? "/tmp/huddle-chat.png" });

    // Logging out in one tab ends the session in every tab: the server closes the other
    // tab's socket (4001) and that tab asks for a login instead of reconnecting.
    const bobElsewhere = watch(await bobContext.newPage());
    await bobElsewhere.goto(base);
    await bobElsewhere.waitForSelector("#join:not([hidden])");
    await join(bobElsewhere, "lobby");
    await bob.click("#logout");
    await bobElsewhere.waitForSelector('#auth-error:has-text("session ended")');
    assert.ok(await bobElsewhere.isVisible("#auth"), "the other tab shows the login form");
    assert.deepEqual(pageErrors.filter((e) => /Content.Security.Policy|Refused to/i.test(e)), [], "no CSP violations");
  } finally {
    await browser.close();
  }
});
