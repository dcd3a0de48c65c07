// A real browser against the dev stack: headless Chromium (Debian's, never
// one downloaded by Node), driven by playwright-core, runs page.html's two
// flows: from the allowed origin everything must work, from another origin
// every credentialed call must be blocked by CORS.
//
//   node tests/browser/run.mjs <allowed page URL> <other-origin page URL> <service URL> <Clerk URL>
//
// CHROMIUM names the browser (default /usr/bin/chromium). Prints one line
// per step and exits 1 when any step fails.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [allowedPage, otherPage, service, clerk] = process.argv.slice(2);
if (!clerk) {
  console.error('usage: node tests/browser/run.mjs <allowed page> <other-origin page> <service URL> <Clerk URL>');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

// A token from the dev stack's Clerk, as a signed-in frontend holds one.
const minted = await fetch(`${clerk}/dev/token?sub=user_browser`);
if (!minted.ok) {
  console.error(`the dev stack's Clerk minted no token: ${minted.status} ${await minted.text()}`);
  process.exit(1);
}
const { token } = await minted.json();

const profile = mkdtempSync(join(tmpdir(), 'image-service-chromium-'));
let failures = 0;
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => console.log(`  page: ${m.text()}`));
  for (const [label, url, flow] of [
    ['allowed origin', allowedPage, 'allowedFlow'],
    ['other origin', otherPage, 'blockedFlow'],
  ]) {
    await page.goto(url);
    console.log(`${label} (${new URL(url).origin})`);
    const results = await page.evaluate(
      ([name, s, t]) => window[name](s, t),
      [flow, service, token],
    );
    for (const r of results) {
      if (!r.ok) failures += 1;
      console.log(`  ${r.ok ? 'ok  ' : 'FAIL'} ${r.step}${r.detail ? `: ${JSON.stringify(r.detail)}` : ''}`);
    }
    const expected = flow === 'allowedFlow' ? 10 : 5;
    if (results.length !== expected) {
      failures += 1;
      console.log(`  FAIL ran ${results.length} of ${expected} steps`);
    }
  }
} catch (e) {
  failures += 1;
  console.log(`FAIL the browser could not run the page (${executablePath}): ${e.message}`);
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
console.log(failures === 0 ? 'browser: every step as expected' : `browser: ${failures} step(s) failed`);
process.exit(failures === 0 ? 0 : 1);
