// Walks the gateway's Admin UI in Debian's Chromium with playwright-core, one scenario per
// run (gateway/tests/admin_browser.rs starts the gateway and reads what this prints).
//
// Environment: ADMIN_BASE (gateway URL), ADMIN_TOKEN (a bearer token), ADMIN_SERVER (the
// server id to work on), ADMIN_SHOTS (screenshot directory), CHROMIUM (the executable),
// ADMIN_REFRESH (the UI's refresh period, seconds).
// Output: `STEP <what>` per checked item, `MEASURE <name> <value>`, and `ASK <what>` when the
// test must act (start traffic, stop or start the upstream); it answers with one line on stdin.
// Any failed check exits non-zero with the reason on stderr.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH || ".", "x.js"));
const { chromium } = require("playwright-core");

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const BASE = env("ADMIN_BASE");
const TOKEN = env("ADMIN_TOKEN");
const SERVER = env("ADMIN_SERVER");
const SHOTS = env("ADMIN_SHOTS");
const REFRESH = Number(process.env.ADMIN_REFRESH || "5");
const scenario = process.argv[2];

const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(what) {
  console.log(`ASK ${what}`);
  const { value, done } = await stdin.next();
  assert.ok(!done && value.trim() === "ok", `the test did not confirm ${what}: ${value}`);
}
const step = (what) => console.log(`STEP ${what}`);
const api = async (p, init = {}) => {
  const res = await fetch(`${BASE}${p}`, { ...init, headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json", ...(init.headers || {}) } });
  return { status: res.status, body: await res.json().catch(() => null) };
};

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(String(e)));
// The API's refusals (401, 422, 503) are expected here; any other console error is not.
page.on("console", (m) => { if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) pageErrors.push(m.text()); });
page.on("dialog", (d) => d.accept());
const shot = async (name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`) });

// The sign-in page (the dialog that asks to sign in again has fields of the same names).
const signinPage = () => page.locator("#signin");
async function signIn() {
  await page.goto(`${BASE}/admin?refresh=${REFRESH}`);
  await signinPage().getByLabel("Bearer token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Servers" }).waitFor();
}
const row = () => page.locator(`tr[data-server="${SERVER}"]`);
const rowButton = (label) => row().getByRole("button", { name: `${label} ${SERVER}`, exact: true });
const toggle = () => page.getByRole("switch", { name: "Enable Session Pooling" });
const background = (loc) => loc.evaluate((e) => getComputedStyle(e).backgroundColor);
const GRAY = "rgb(156, 163, 175)";
const BLUE = "rgb(37, 99, 235)";

async function openConfigAndEnable() {
  await rowButton("Pool Config").click();
  const dialog = page.getByRole("dialog", { name: "Pool Config" });
  await dialog.waitFor();
  return dialog;
}

const scenarios = {
  // The setup guide's Steps 3-4 and its verification checklist.
  async guide() {
    // Sign-in: a bad token is refused with the API's words, and nothing else shows.
    const started = Date.now();
    await page.goto(`${BASE}/admin?refresh=${REFRESH}`);
    await shot("admin-signin");
    await signinPage().getByLabel("Bearer token").fill("not-a-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByText("Invalid token").waitFor();
    assert.ok(await page.locator("#app").isHidden(), "the app stays hidden without a valid token");
    step("a bad token is refused");
    await signIn();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("mcp-pool-admin-token")), TOKEN);
    assert.ok(!(await page.content()).includes(TOKEN), "the token is never rendered");
    step("signed in; the token is in sessionStorage only");
    await row().waitFor();
    await shot("admin-servers");

    // Pool Stats before pooling: the 503 explained, a button that opens Pool Config.
    await rowButton("Pool Stats").click();
    const stats = page.getByRole("dialog", { name: `Pool Stats · ${SERVER}` });
    await stats.getByText("Pooling is not enabled for server").waitFor();
    await stats.getByText("Pooling not enabled for server").first().waitFor();
    await shot("admin-pool-stats-503");
    await stats.getByRole("button", { name: "Open Pool Config" }).click();
    const config = page.getByRole("dialog", { name: "Pool Config" });
    await config.waitFor();
    assert.ok(await stats.isHidden());
    step("Pool Stats before enabling explains the 503 and opens Pool Config");

    // The toggle: gray and off, the fields hidden; blue and on, the fields shown.
    assert.equal(await toggle().getAttribute("aria-checked"), "false");
    assert.equal(await background(toggle()), GRAY);
    assert.ok(await config.getByLabel("Strategy").isHidden());
    await toggle().focus();
    await page.keyboard.press("Space"); // keyboard-operable
    assert.equal(await toggle().getAttribute("aria-checked"), "true");
    await page.mouse.move(0, 0);
    assert.equal(await background(toggle()), BLUE);
    await config.getByLabel("Strategy").waitFor();
    step("the toggle is on and blue; the fields appear");

    await config.getByLabel("Strategy").selectOption("round_robin");
    assert.match(await page.locator("#pc-strategy-when").textContent(), /stateless/);
    await config.getByLabel("Min Size").fill("2");
    await config.getByLabel("Max Size").fill("10");
    await config.getByLabel("Target Size").fill("5");
    await config.getByLabel("Idle Timeout (seconds)").fill("3600");
    await config.getByLabel("Max Lifetime (seconds)").fill("7200");
    await config.getByLabel("Enable Auto-scaling").check();
    await config.getByLabel("Health Check Threshold (%)").fill("70");
    await shot("admin-pool-config");
    await config.getByRole("button", { name: "Save Configuration" }).click();
    await page.getByRole("status").getByText("Pool configuration saved successfully").waitFor();
    await config.waitFor({ state: "hidden" });
    await row().getByText("On · round_robin").waitFor();
    const saved = await api(`/servers/${SERVER}/pool/config`);
    assert.deepEqual(
      [saved.body.enabled, saved.body.strategy, saved.body.min_size, saved.body.max_size, saved.body.size, saved.body.max_idle_time, saved.body.max_lifetime, saved.body.auto_scale, saved.body.health_check_threshold],
      [true, "round_robin", 2, 10, 5, 3600, 7200, true, 70]);
    step("Save Configuration: toast, modal closed, table updated, API has the values");
    await ask("log-pool-created");
    await ask("traffic");

    // Pool Stats: no 503, counts as the API has them (no traffic in between).
    await rowButton("Pool Stats").click();
    await stats.locator('dd[data-stat="acquisitions"]').waitFor();
    const expected = (await api(`/servers/${SERVER}/pool/stats`)).body;
    for (const key of ["pool_id", "strategy", "sessions_total", "sessions_active", "sessions_available", "acquisitions", "releases", "hits", "misses", "timeouts", "evictions"]) {
      assert.equal(await stats.locator(`dd[data-stat="${key}"]`).textContent(), String(expected[key]), key);
    }
    assert.ok(expected.acquisitions >= 10 && expected.sessions_total >= 1, JSON.stringify(expected));
    assert.ok(await page.locator("#ps-disabled").isHidden());
    await shot("admin-pool-stats");
    step(`Pool Stats shows the API's counts (${expected.acquisitions} acquisitions, ${expected.sessions_total} sessions)`);
    await page.keyboard.press("Escape");
    await stats.waitFor({ state: "hidden" });
    assert.equal(await page.evaluate(() => document.activeElement.textContent), "Pool Stats", "focus back on the opener");

    // Pool Health: the pool listed, green, score ≈ 100.
    await page.getByRole("button", { name: "Pool Health" }).click();
    const card = page.locator(`article.card[data-server="${SERVER}"]`);
    await card.waitFor();
    await page.waitForFunction((id) => document.querySelector(`article.card[data-server="${id}"]`)?.dataset.status === "healthy", SERVER, { timeout: 4 * REFRESH * 1000 });
    const score = Number(await card.locator('dd[data-figure="score"]').textContent());
    assert.ok(score >= 95, `health score ${score}`);
    assert.equal(await card.locator(".dot").evaluate((e) => getComputedStyle(e).backgroundColor), "rgb(22, 163, 74)");
    assert.equal(await card.locator("li[data-circuit]").first().getAttribute("data-circuit"), "closed");
    assert.equal(await card.locator("canvas").count() >= 4, true, "four charts");
    // Let the charts gather a few points of steady traffic.
    await ask("traffic-on");
    await page.waitForFunction(() => document.querySelectorAll("article.card .u-over").length === 4, null, { timeout: 1000 });
    await page.waitForTimeout(5 * REFRESH * 1000);
    await shot("admin-pool-health");
    step(`Pool Health lists ${SERVER}: green, score ${score}, circuit closed, charts drawn`);

    await page.getByRole("button", { name: "Metrics" }).click();
    await page.locator("#metrics-text").getByText("mcp_pool_hits_total").first().waitFor();
    await shot("admin-metrics");
    step("Metrics shows the pool's Prometheus metrics");
    console.log(`MEASURE walk_ms ${Date.now() - started}`);
  },

  // Max Size 0: refused by the client's check, and by the API's 422 when that is off.
  async invalid() {
    await signIn();
    const config = await openConfigAndEnable();
    if ((await toggle().getAttribute("aria-checked")) === "false") await toggle().click();
    await config.getByLabel("Max Size").fill("0");
    let puts = 0;
    page.on("request", (r) => { if (r.method() === "PUT") puts += 1; });
    await config.getByRole("button", { name: "Save Configuration" }).click();
    const err = page.locator("#pc-err-max_size");
    await err.getByText("max_size = 0 is out of range: must be 1 to 1000").waitFor();
    assert.equal(await config.getByLabel("Max Size").getAttribute("aria-invalid"), "true");
    assert.equal(puts, 0, "the client's check sends nothing");
    step("the client refuses Max Size 0 next to the field");
    await page.evaluate(() => document.getElementById("pc-form").removeAttribute("data-validate"));
    const answer = page.waitForResponse((r) => r.request().method() === "PUT");
    await config.getByRole("button", { name: "Save Configuration" }).click();
    assert.equal((await answer).status(), 422);
    await err.getByText("max_size = 0 is out of range: must be 1 to 1000").waitFor();
    assert.ok(await config.isVisible(), "the modal stays open");
    assert.equal((await api(`/servers/${SERVER}/pool/config`)).body.max_size !== 0, true);
    await shot("admin-pool-config-422");
    step("the API's 422 is shown next to Max Size");
  },

  // The health card turns red within two refresh periods of the API saying so, and green again.
  async outage() {
    await signIn();
    await page.getByRole("button", { name: "Pool Health" }).click();
    const card = page.locator(`article.card[data-server="${SERVER}"]`);
    await card.waitFor();
    const until = async (status) => {
      // The API first: when does the gateway itself report it?
      for (;;) {
        const h = (await api("/servers/pools/health")).body.find((x) => x.server_id === SERVER);
        if (h.status === status) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const seen = Date.now();
      await page.waitForFunction(([id, s]) => document.querySelector(`article.card[data-server="${id}"]`)?.dataset.status === s, [SERVER, status], { timeout: 2 * REFRESH * 1000 });
      return Date.now() - seen;
    };
    await page.waitForFunction((id) => document.querySelector(`article.card[data-server="${id}"]`)?.dataset.status === "healthy", SERVER, { timeout: 4 * REFRESH * 1000 });
    step("healthy before the outage");
    await ask("upstream-stop");
    const red = await until("unhealthy");
    assert.equal(await card.locator(".dot").evaluate((e) => getComputedStyle(e).backgroundColor), "rgb(220, 38, 38)");
    assert.notEqual(await card.locator("li[data-circuit]").first().getAttribute("data-circuit"), "closed");
    // The card says why, in the gateway's words.
    const why = card.locator("[data-last-error]").first();
    await why.waitFor({ timeout: 2 * REFRESH * 1000 });
    assert.match(await why.textContent(), /^Last error \(\d+ s ago\): \S/);
    await shot("admin-pool-health-unhealthy");
    step(`red ${red} ms after the API reported unhealthy (refresh ${REFRESH} s)`);
    console.log(`MEASURE red_after_ms ${red}`);
    await ask("upstream-start");
    const green = await until("healthy");
    assert.equal(await card.locator(".dot").evaluate((e) => getComputedStyle(e).backgroundColor), "rgb(22, 163, 74)");
    step(`green ${green} ms after the API reported healthy again`);
    console.log(`MEASURE green_after_ms ${green}`);
  },

  // Username and password (the gateway's ADMIN_USERNAME=operator, ADMIN_PASSWORD): a wrong
  // password is refused, the right one signs in with a minted token.
  async password() {
    await page.goto(`${BASE}/admin?refresh=${REFRESH}`);
    await signinPage().getByText("Sign in with a username and password").click();
    await signinPage().getByLabel("Username").fill("operator");
    await signinPage().getByLabel("Password", { exact: true }).fill("not the password");
    await page.getByRole("button", { name: "Sign in with password" }).click();
    await page.getByText("Wrong username or password").waitFor();
    assert.equal(await signinPage().getByLabel("Password", { exact: true }).inputValue(), "", "the password field is cleared");
    step("a wrong password is refused");
    await signinPage().getByLabel("Password", { exact: true }).fill(env("ADMIN_PASSWORD"));
    await page.getByRole("button", { name: "Sign in with password" }).click();
    await page.getByRole("heading", { name: "Servers" }).waitFor();
    await row().waitFor();
    const minted = await page.evaluate(() => sessionStorage.getItem("mcp-pool-admin-token"));
    assert.equal(JSON.parse(Buffer.from(minted.split(".")[1], "base64url").toString()).sub, "operator");
    assert.ok(!(await page.content()).includes(env("ADMIN_PASSWORD")), "the password is not in the page");
    step("the right password signs in with a token minted for operator");
  },

  // Add, deactivate/activate and delete a server (needs the server CRUD routes).
  async crud() {
    await signIn();
    await page.getByRole("button", { name: "Add server" }).click();
    const form = page.getByRole("dialog", { name: "Add server" });
    await form.getByLabel("ID").fill("added");
    await form.getByLabel("Name").fill("Added by the UI");
    await form.getByLabel("URL").fill(`${BASE}/nowhere/mcp`);
    await form.getByRole("button", { name: "Save" }).click();
    await page.getByRole("status").getByText("Server added added").waitFor();
    const added = page.locator('tr[data-server="added"]');
    await added.getByText("Added by the UI").waitFor();
    step("Add server: the row appears");
    await added.getByRole("button", { name: "Edit added" }).click();
    const edit = page.getByRole("dialog", { name: "Edit server added" });
    assert.equal(await edit.getByLabel("ID").getAttribute("readonly"), "", "the id is not editable");
    await edit.getByLabel("Name").fill("Renamed by the UI");
    await edit.getByRole("button", { name: "Save" }).click();
    await page.getByRole("status").getByText("Server added saved").waitFor();
    await added.getByText("Renamed by the UI").waitFor();
    step("Edit: the name changes");
    await added.getByRole("button", { name: "Deactivate added" }).click();
    await added.getByText("Inactive").waitFor();
    await added.getByRole("button", { name: "Activate added" }).click();
    await added.getByText("Active", { exact: true }).waitFor();
    step("Deactivate and Activate");
    await added.getByRole("button", { name: "Delete added" }).click();
    await added.waitFor({ state: "detached" });
    assert.equal((await api("/servers/added")).status, 404);
    step("Delete: the row and the server are gone");
  },

  // Deactivate then Activate keep the server's pool config (the test made it sticky 3/8/4,
  // idle 600 s); while inactive, its Pool Config and Pool Stats are disabled and say why.
  async toggle() {
    await signIn();
    const before = (await api(`/servers/${SERVER}/pool/config`)).body;
    assert.deepEqual(
      [before.enabled, before.strategy, before.min_size, before.max_size, before.size, before.max_idle_time],
      [true, "sticky", 3, 8, 4, 600]);
    await row().getByText("On · sticky").waitFor();
    await rowButton("Deactivate").click();
    await row().getByText("Inactive").waitFor();
    const why = "Activate the server to configure its pool";
    await row().getByText(why).waitFor();
    for (const label of ["Pool Config", "Pool Stats"]) {
      const button = rowButton(label);
      assert.ok(await button.isDisabled(), `${label} is disabled`);
      assert.equal(await button.getAttribute("title"), why, label);
      const described = await button.evaluate((b) => document.getElementById(b.getAttribute("aria-describedby"))?.textContent);
      assert.equal(described, why, `${label} is described by the row's note`);
    }
    assert.equal(await page.getByRole("dialog").count(), 0, "no dialog, no Server not found");
    const inactive = (await api(`/servers/${SERVER}`)).body;
    assert.equal(inactive.enabled, false);
    assert.deepEqual(inactive.pool, before, "the inactive server's record keeps its pool config");
    await shot("admin-inactive-server");
    step("an inactive server's Pool Config and Pool Stats are disabled, and the row says why");

    await rowButton("Activate").click();
    await row().getByText("Active", { exact: true }).waitFor();
    await row().getByText("On · sticky").waitFor();
    assert.deepEqual((await api(`/servers/${SERVER}/pool/config`)).body, before);
    const config = await openConfigAndEnable();
    assert.equal(await toggle().getAttribute("aria-checked"), "true");
    assert.equal(await config.getByLabel("Strategy").inputValue(), "sticky");
    for (const [label, value] of [["Min Size", "3"], ["Max Size", "8"], ["Target Size", "4"], ["Idle Timeout (seconds)", "600"]]) {
      assert.equal(await config.getByLabel(label).inputValue(), value, label);
    }
    step("Deactivate then Activate: sticky 3/8/4 with idle 600 s, in the API and in Pool Config");
    await page.keyboard.press("Escape");

    // A stdio server of the configuration file: Edit shows its command, read-only, and saves a
    // new weight; the command and its environment (masked by the API) are kept.
    const tool = page.locator('tr[data-server="tool"]');
    const toolBefore = (await api("/servers/tool")).body.endpoints[0];
    assert.deepEqual(toolBefore.env, { API_KEY: "***" });
    await tool.getByRole("button", { name: "Edit tool", exact: true }).click();
    const edit = page.getByRole("dialog", { name: "Edit server tool" });
    assert.equal(await edit.getByLabel("URL").inputValue(), "stdio:mcp-server-nowhere");
    assert.equal(await edit.getByLabel("URL").getAttribute("readonly"), "");
    assert.ok(await edit.getByLabel("Transport").isDisabled());
    await edit.getByLabel("Weight").fill("3");
    await edit.getByRole("button", { name: "Save" }).click();
    await page.getByRole("status").getByText("Server tool saved").waitFor();
    assert.deepEqual((await api("/servers/tool")).body.endpoints[0], { ...toolBefore, weight: 3 });
    await tool.getByRole("button", { name: "Deactivate tool", exact: true }).click();
    await tool.getByText("Inactive").waitFor();
    await tool.getByRole("button", { name: "Activate tool", exact: true }).click();
    await tool.getByText("Active", { exact: true }).waitFor();
    assert.deepEqual((await api("/servers/tool")).body.endpoints[0], { ...toolBefore, weight: 3 });
    assert.ok(!(await page.content()).includes(env("ADMIN_STDIO_SECRET")), "no env value on the page");
    step("a stdio server of the file: Edit changes its weight and keeps its command; Deactivate/Activate too");
  },

  // The gateway refuses the page's token (ADMIN_EXPIRED_TOKEN, expired, stands in for it)
  // while a form is open: the form keeps its values, a sign-in opens over it, and Save then
  // saves them. Pool Config: refused on Save; Edit: refused by the background refresh.
  async expired() {
    await signIn();
    const expired = env("ADMIN_EXPIRED_TOKEN");
    // Route predicates get a URL.
    const isApi = (url) => url.pathname.startsWith("/servers");
    const withExpiredToken = (route) =>
      route.continue({ headers: { ...route.request().headers(), authorization: `Bearer ${expired}` } });
    const again = page.getByRole("dialog", { name: "Sign in again" });

    const config = await openConfigAndEnable();
    if ((await toggle().getAttribute("aria-checked")) === "false") await toggle().click();
    const values = [["Min Size", "2"], ["Max Size", "6"], ["Target Size", "3"], ["Idle Timeout (seconds)", "900"]];
    await config.getByLabel("Strategy").selectOption("least_connections");
    for (const [label, value] of values) await config.getByLabel(label).fill(value);
    const saveRoute = (url) => url.pathname.endsWith("/pool/config");
    await page.route(saveRoute, (route) => route.request().method() === "PUT" ? withExpiredToken(route) : route.continue());
    const refused = page.waitForResponse((r) => r.request().method() === "PUT");
    await config.getByRole("button", { name: "Save Configuration" }).click();
    assert.equal((await refused).status(), 401);
    await again.waitFor();
    await page.locator("#pc-error").getByText("Not saved: the gateway refused the token (Token has expired").waitFor();
    assert.ok(await config.isVisible(), "Pool Config stays open under the sign-in");
    assert.equal(await config.getByLabel("Strategy").inputValue(), "least_connections");
    for (const [label, value] of values) assert.equal(await config.getByLabel(label).inputValue(), value, label);
    assert.notEqual((await api(`/servers/${SERVER}/pool/config`)).body.strategy, "least_connections", "nothing saved");
    await shot("admin-sign-in-again");
    step("a refused Save keeps Pool Config and its values, and asks to sign in again over it");
    await page.unroute(saveRoute);
    await again.getByLabel("Bearer token").fill(TOKEN);
    await again.getByRole("button", { name: "Sign in", exact: true }).click();
    await again.waitFor({ state: "hidden" });
    await page.locator("#pc-error").getByText("Signed in again: press Save again").waitFor();
    await config.getByRole("button", { name: "Save Configuration" }).click();
    await page.getByRole("status").getByText("Pool configuration saved successfully").waitFor();
    const saved = (await api(`/servers/${SERVER}/pool/config`)).body;
    assert.deepEqual([saved.strategy, saved.min_size, saved.max_size, saved.size, saved.max_idle_time], ["least_connections", 2, 6, 3, 900]);
    step("signed in again, Save saves the same values");

    await rowButton("Edit").click();
    const edit = page.getByRole("dialog", { name: `Edit server ${SERVER}` });
    await edit.getByLabel("Name").fill("Renamed after signing in again");
    await page.route(isApi, withExpiredToken);
    // The background refresh is the first to be refused.
    await again.waitFor({ timeout: 3 * REFRESH * 1000 });
    assert.equal(await edit.getByLabel("Name").inputValue(), "Renamed after signing in again");
    await page.unroute(isApi, withExpiredToken);
    await again.getByText("Sign in with a username and password").click();
    await again.getByLabel("Username").fill("operator");
    await again.getByLabel("Password", { exact: true }).fill(env("ADMIN_PASSWORD"));
    await again.getByRole("button", { name: "Sign in with password" }).click();
    await again.waitFor({ state: "hidden" });
    await edit.getByRole("button", { name: "Save" }).click();
    await page.getByRole("status").getByText(`Server ${SERVER} saved`).waitFor();
    const server = (await api(`/servers/${SERVER}`)).body;
    assert.equal(server.name, "Renamed after signing in again");
    assert.deepEqual(server.pool, saved, "the edit kept the pool config");
    step("a refusal during Edit keeps its values; signed in with the password, Save saves them");
  },

  // A user token (role user): a read-only view. Nothing that needs the admin role is offered,
  // and the page says why.
  async readonly() {
    await page.goto(`${BASE}/admin?refresh=${REFRESH}`);
    await signinPage().getByLabel("Bearer token").fill(env("ADMIN_USER_TOKEN"));
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Servers" }).waitFor();
    await page.getByText("Signed in with a user token: a read-only view.").waitFor();
    await rowButton("Pool Stats").waitFor();
    for (const label of ["Edit", "Pool Config", "Deactivate", "Delete"]) {
      assert.equal(await rowButton(label).count(), 0, `${label} is not offered to a user`);
    }
    assert.equal(await page.getByRole("button", { name: "Add server" }).isVisible(), false);
    assert.equal(await page.getByRole("button", { name: "Metrics" }).isVisible(), false);
    await page.getByRole("button", { name: "Pool Health" }).click();
    await page.getByRole("heading", { name: "Pool Health" }).waitFor();
    await shot("admin-user-readonly");
    step("a user token sees a read-only view");
  },

  // What the first load of /admin transfers (headers and encoded bodies as Chromium counts
  // them): the page and its assets, then the API calls of the first Servers and Pool Health views.
  async weight() {
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("Network.enable");
    const urls = new Map();
    const bytes = { ui: 0, api: 0 };
    cdp.on("Network.requestWillBeSent", (e) => urls.set(e.requestId, e.request.url));
    cdp.on("Network.loadingFinished", (e) => {
      const url = urls.get(e.requestId) || "";
      bytes[new URL(url, BASE).pathname.startsWith("/admin") ? "ui" : "api"] += e.encodedDataLength;
    });
    await signIn();
    await page.getByRole("button", { name: "Pool Health" }).click();
    await page.waitForLoadState("networkidle");
    console.log(`MEASURE first_load_ui_bytes ${bytes.ui}`);
    console.log(`MEASURE first_load_api_bytes ${bytes.api}`);
    // A reload: the HTML is revalidated, the versioned assets come from the memory cache.
    bytes.ui = 0;
    bytes.api = 0;
    await page.reload();
    await page.getByRole("heading", { name: "Servers" }).waitFor();
    await page.waitForLoadState("networkidle");
    console.log(`MEASURE reload_ui_bytes ${bytes.ui}`);
    step("weighed");
  },
};

try {
  assert.ok(scenarios[scenario], `unknown scenario ${scenario}`);
  await scenarios[scenario]();
  assert.deepEqual(pageErrors, [], "no script error in the page");
  console.log("DONE");
} catch (e) {
  console.error(`FAILED ${scenario}: ${e.stack || e}`);
  await shot(`failed-${scenario}`).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
  process.exit();
}
