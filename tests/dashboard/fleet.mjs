// Drives the weir dashboard's fleet panel in headless Chromium for
// tests/it/dashboard.rs:
//
//   node fleet.mjs ADMIN_URL NODES
//
// Opens ADMIN_URL/dashboard, waits until the fleet table lists NODES nodes
// all `current`, and prints one JSON document with what the panel shows
// (and any console or page error). Exits non-zero only when the browser
// cannot be driven; the Rust test judges the JSON.

import { chromium } from "playwright-core";

const [admin, count] = process.argv.slice(2);
if (!admin || !count) {
  console.error("usage: node fleet.mjs ADMIN_URL NODES");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const result = { consoleErrors: [], pageErrors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("console", (m) => { if (m.type() === "error") result.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => result.pageErrors.push(String(e)));
  await page.goto(admin + "/dashboard", { waitUntil: "load" });
  try {
    await page.waitForFunction((n) => {
      const rows = [...document.querySelectorAll("#fleet tbody tr[data-node]")];
      return rows.length === n && rows.every((r) => r.dataset.state === "current");
    }, Number(count), { timeout: 20000 });
  } catch (e) {
    result.waitError = String(e);
  }
  result.fleet = await page.evaluate(() => ({
    hidden: document.getElementById("fleet-section").hidden,
    rows: [...document.querySelectorAll("#fleet tbody tr[data-node]")].map((tr) => ({
      node: tr.dataset.node,
      state: tr.dataset.state,
      cells: [...tr.children].map((td) => td.textContent),
    })),
  }));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
