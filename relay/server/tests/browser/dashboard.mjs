// Drives the dashboard in real headless Chromium as a customer would:
// log in, add a destination and see its key masked, change a sender's
// encoder settings, watch the live chart, log out. Screenshots go to
// $SCREENSHOTS. Exits non-zero with a message on the first failure.
import { chromium } from 'playwright-core';

const { RELAY_URL, EMAIL, PASSWORD, SCREENSHOTS, STREAM_KEY } = process.env;
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const fail = (msg) => { throw new Error(msg); };
const consoleErrors = [];
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.setDefaultTimeout(15000);

  // Log in.
  await page.goto(`${RELAY_URL}/login`);
  await page.fill('#email', EMAIL);
  await page.fill('#password', PASSWORD);
  await Promise.all([page.waitForURL(/\/o\/[0-9a-f]+\/senders$/), page.click('button[type=submit]')]);
  if (!(await page.textContent('#sender-rows')).includes('van-1')) fail('sender van-1 not listed');
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === '__Host-strata_session');
  if (!session || !session.httpOnly || !session.secure) fail(`session cookie flags wrong: ${JSON.stringify(session)}`);
  console.log('logged in');

  // Add a destination; the key is shown masked, never in clear.
  await page.click('text=Destinations');
  await page.fill('#name', 'YouTube main');
  await page.selectOption('#kind', 'rtmp');
  await page.fill('#target', 'rtmp://a.rtmp.youtube.com/live2');
  await page.fill('#secret', STREAM_KEY);
  await Promise.all([page.waitForURL(/\/destinations$/), page.click('#add-destination button[type=submit]')]);
  const row = page.locator('tr', { hasText: 'YouTube main' });
  const masked = await row.locator('td.masked').textContent();
  if (!masked.includes('••••••••') || !masked.includes(STREAM_KEY.slice(-4))) fail(`key not masked as expected: ${masked}`);
  if ((await page.content()).includes(STREAM_KEY)) fail('stream key appears in the page');
  await page.screenshot({ path: `${SCREENSHOTS}/destinations.png`, fullPage: true });
  console.log('destination added, key masked');

  // Change a sender's settings.
  await page.click('text=Senders');
  await page.click('text=van-1');
  await page.selectOption('#height', '1080');
  await page.selectOption('#fps', '25');
  await page.selectOption('#codec', 'h265');
  await page.fill('#max_kbps', '4500');
  await Promise.all([page.waitForURL(/saved=offline$/), page.click('text=Save settings')]);
  if (!(await page.textContent('[role=status]')).includes('Settings saved')) fail('no confirmation');
  if ((await page.inputValue('#height')) !== '1080' || (await page.inputValue('#max_kbps')) !== '4500') fail('settings not kept');
  // A bad value is refused with the reason, and the form keeps what was typed.
  await page.fill('#min_kbps', '9000');
  await page.click('text=Save settings');
  await page.waitForSelector('[role=alert]');
  if (!(await page.textContent('[role=alert]')).includes('minimum bitrate is above the maximum')) fail('no reason for the refusal');
  console.log('settings saved; bad settings refused');

  // The live chart: the test adds telemetry rows; the SSE stream must bring them in without a reload.
  await page.goto(page.url().replace(/\/settings$/, ''));
  await page.waitForFunction(() => document.querySelector('#sender-chart')?.textContent.includes('wwan2'), null, { timeout: 20000 });
  await page.screenshot({ path: `${SCREENSHOTS}/sender.png`, fullPage: true });
  console.log('live chart updated');

  // Log out.
  await Promise.all([page.waitForURL(/\/login$/), page.click('text=Log out')]);
  await page.goto(`${RELAY_URL}/`);
  if (!page.url().endsWith('/login')) fail('still logged in after logout');
  console.log('logged out');
  // And back in: a logged-out browser must not be locked out of the form.
  await page.fill('#email', EMAIL);
  await page.fill('#password', PASSWORD);
  await Promise.all([page.waitForURL(/\/o\/[0-9a-f]+\/senders$/), page.click('button[type=submit]')]);
  console.log('logged in again');
  // The one refused form above answers 400 on purpose; anything else is a fault.
  const unexpected = consoleErrors.filter((e) => !e.includes('status of 400'));
  if (unexpected.length) fail(`browser console errors: ${unexpected.join(' | ')}`);
} finally {
  await browser.close();
}
