// Screenshot of a running gateway's dashboard, for the book (docs/src/operations.md):
//   node tests/dashboard/shot.mjs http://127.0.0.1:9901 docs/src/dashboard.png
import { chromium } from "playwright-core";
const [admin, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto(admin + "/dashboard");
  await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 2, null, { timeout: 15000 });
  await page.screenshot({ path: out, fullPage: true });
} finally {
  await browser.close();
}
