// Drives the weir dashboard in headless Chromium (Debian's /usr/bin/chromium
// through playwright-core) for tests/it/dashboard.rs.
//
//   node check.mjs ADMIN_URL PROXY_URL SCREENSHOT.png
//
// 1. Opens ADMIN_URL/dashboard and waits for its first update; records every
//    console error and page error from then on.
// 2. Reads what the page shows: route nodes in the topology, route curves,
//    plugin rows, upstream rows, heat map cells, the events table.
// 3. Sends traffic through PROXY_URL (12 requests to /shop, 6 of them 503s
//    from the upstream, and 4 to /blog) and waits until the page shows it:
//    the plugin table's call counts and the routes' colours must change.
// 4. Prints one JSON document with what it saw, and saves a screenshot.
//
// It exits non-zero only when the browser cannot be driven at all; the Rust
// test judges the JSON.

import { chromium } from "playwright-core";

const [admin, proxy, shot] = process.argv.slice(2);
if (!admin || !proxy) {
  console.error("usage: node check.mjs ADMIN_URL PROXY_URL [SCREENSHOT]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const result = { consoleErrors: [], pageErrors: [], failedRequests: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("console", (m) => { if (m.type() === "error") result.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => result.pageErrors.push(String(e)));
  page.on("requestfailed", (r) => result.failedRequests.push(r.url() + " " + (r.failure()?.errorText ?? "")));
  page.on("response", (r) => { if (r.status() >= 400) result.failedRequests.push(r.url() + " " + r.status()); });

  const response = await page.goto(admin + "/dashboard", { waitUntil: "load" });
  result.status = response.status();
  result.title = await page.title();
  await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 1, null, { timeout: 15000 });

  const read = () => page.evaluate(() => {
    const rows = (id) => [...document.querySelectorAll(`#${id} tbody tr`)];
    const plugin = (name) => {
      const tr = document.querySelector(`#plugins tr[data-plugin="${name}"]`);
      return tr ? [...tr.children].map((td) => td.textContent) : null;
    };
    const stroke = (name) => document.querySelector(`#topology g.route[data-route="${name}"] rect`)?.getAttribute("stroke");
    return {
      liveText: document.getElementById("live-text").textContent,
      updates: Number(document.body.dataset.updates || 0),
      topologyRoutes: [...document.querySelectorAll("#topology g.route")].map((g) => g.dataset.route),
      topologyTexts: [...document.querySelectorAll("#topology text")].map((t) => t.textContent),
      curveRoutes: [...document.querySelectorAll("#curves .curve")].map((c) => c.dataset.route),
      curvePolylines: document.querySelectorAll("#curves polyline").length,
      plugins: rows("plugins").map((tr) => tr.dataset.plugin).filter(Boolean),
      fleetHidden: document.getElementById("fleet-section").hidden,
      pluginTag: plugin("tag"),
      pluginOther: plugin("other"),
      upstreams: rows("upstreams").map((tr) => tr.children[0].textContent),
      heatCells: document.querySelectorAll("#heatmap rect.heat-cell").length,
      heatLit: [...document.querySelectorAll("#heatmap rect.heat-cell")].filter((r) => r.getAttribute("fill") !== "#1d2733").length,
      shopStroke: stroke("shop"),
      targetStrokes: [...document.querySelectorAll("#topology g.target rect")].map((r) => r.getAttribute("stroke")),
      blogStroke: stroke("blog"),
      generation: document.getElementById("c-gen").textContent,
      rate: document.getElementById("c-rate").textContent,
      reloads: rows("reloads").map((tr) => tr.textContent),
    };
  });

  result.before = await read();

  // Traffic the page must come to show.
  const send = async (path, headers) => (await fetch(proxy + path, { headers })).status;
  const statuses = [];
  for (let i = 0; i < 12; i++) statuses.push(await send("/shop/item/" + i, i % 2 ? { "x-status": "503" } : {}));
  for (let i = 0; i < 4; i++) statuses.push(await send("/blog/post/" + i, {}));
  result.sentStatuses = statuses;

  const before = result.before.updates;
  await page.waitForFunction(
    (n) => {
      const tr = document.querySelector('#plugins tr[data-plugin="tag"]');
      const ok = tr ? Number(tr.children[6].textContent) : 0;
      const shop = document.querySelector('#topology g.route[data-route="shop"] rect');
      return Number(document.body.dataset.updates || 0) > n && ok >= 16 && shop && shop.getAttribute("stroke") === "var(--bad)";
    },
    before,
    { timeout: 20000 },
  ).catch((e) => { result.waitError = String(e); });
  result.after = await read();

  // The window buttons redraw the curves.
  await page.click('button[data-window="60"]');
  result.windowOn = await page.evaluate(() => document.querySelector('button[data-window="60"]').classList.contains("on"));
  await page.click('button[data-heat="p99"]');
  result.heatOn = await page.evaluate(() => document.querySelector('button[data-heat="p99"]').classList.contains("on"));

  if (shot) await page.screenshot({ path: shot, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
