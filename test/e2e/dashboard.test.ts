import { existsSync, mkdirSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addDays } from '../../src/lib/dates.js';
import { D, FLAG, SECRETS, startHttpFixture, type HttpFixture } from '../helpers/http-fixture.js';

// The dashboard in a real browser: Debian's headless chromium driven by playwright-core, against a started
// createL2flow() with a real warehouse database, SAP and SMTP servers on 127.0.0.1. Screenshots go to test-artifacts/.

// What the functions passed to page.evaluate use: they run in the page, not in node (no DOM lib for the whole project).
declare const document: any, window: any, sessionStorage: any, getComputedStyle: any;

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = 'test-artifacts';
const haveBrowser = existsSync(CHROMIUM);
if (!haveBrowser && process.env.L2FLOW_REQUIRE_BROWSER) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium`);
if (!haveBrowser) console.warn(`dashboard browser tests skipped: ${CHROMIUM} is missing (apt-get install -y chromium; L2FLOW_REQUIRE_BROWSER=1 makes this an error)`);

// whenMissing: pass, and a free date between runs, so no run waits behind another.
const [OK, FAILED, LIVE, TRIGGERED] = [D, addDays(D, 2), addDays(D, 4), addDays(D, 6)];

let fx: HttpFixture;
let browser: Browser;
/** Every URL any page asked for, and every console error: checked at the end. */
const requested: string[] = [];
const consoleErrors: string[] = [];

async function settled(date: string, timeoutMs = 20_000): Promise<string> {
  for (const end = Date.now() + timeoutMs; Date.now() < end; await new Promise((r) => setTimeout(r, 100))) {
    const r = await fx.call('GET', `/api/runs/${date}`);
    if (['success', 'failed', 'cancelled'].includes(r.body?.status)) return r.body.status;
  }
  throw new Error(`the run of ${date} did not end within ${timeoutMs} ms`);
}

const flag = (logicalDate: string) => fx.db.pool.query('insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2)', [FLAG, addDays(logicalDate, -1)]);

async function open(path: string, viewport = { width: 1280, height: 800 }): Promise<Page> {
  const page = await browser.newPage({ viewport, locale: 'en-US' });
  page.on('request', (r) => void requested.push(r.url()));
  page.on('console', (m) => void (m.type() === 'error' && consoleErrors.push(m.text())));
  // The server has a token: the page asks for it once, at the first write.
  page.on('dialog', (d) => void (d.type() === 'prompt' ? d.accept(SECRETS.token) : d.accept()));
  await page.goto(`${fx.url}${path}`);
  return page;
}

describe.skipIf(!haveBrowser)('dashboard in headless chromium', () => {
  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    fx = await startHttpFixture({ sensors: { wait_for_success_end: { whenMissing: 'pass' } } });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--disable-component-update', '--disable-sync'],
    });
    await flag(OK);
    expect((await fx.call('POST', '/api/runs', { json: { date: OK } })).status).toBe(201);
    expect(await settled(OK)).toBe('success');
    fx.sap.setHandler((res) => res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"unknown load id"}'));
    await flag(FAILED);
    expect((await fx.call('POST', '/api/runs', { json: { date: FAILED } })).status).toBe(201);
    expect(await settled(FAILED)).toBe('failed');
    fx.sap.setHandler((res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}'));
  }, 90_000);

  afterAll(async () => {
    await browser?.close();
    await fx?.close();
  });

  it('serves the page and its assets with their content types and a strict Content-Security-Policy', async () => {
    for (const [path, type] of [['/', 'text/html'], [`/runs/${OK}`, 'text/html'], ['/assets/app.js', 'text/javascript'], ['/assets/style.css', 'text/css'], ['/assets/statechart.css', 'text/css']]) {
      const res = await fetch(`${fx.url}${path}`);
      expect(res.status, path).toBe(200);
      expect(res.headers.get('content-type'), path).toContain(type);
      expect(res.headers.get('content-security-policy'), path).toMatch(/^default-src 'self'/);
    }
    for (const path of ['/assets/..%2Fapi.js', '/assets/nothing.js', '/assets/.hidden', '/runs/tomorrow']) {
      expect((await fetch(`${fx.url}${path}`)).status, path).toBeGreaterThanOrEqual(400);
    }
  });

  it('the grid shows each run with a symbol and a colour class per step state', async () => {
    const page = await open('/');
    const cell = (date: string, step: string) => page.locator(`#grid tr[data-date="${date}"] td[data-step="${step}"]`);
    await cell(FAILED, 'send_flg_to_sap').waitFor();
    expect(await page.locator(`#grid tr[data-date="${OK}"]`).getAttribute('data-status')).toBe('success');
    expect(await cell(OK, 'send_flg_to_sap').textContent()).toBe('✓');
    expect(await cell(OK, 'send_flg_to_sap').getAttribute('class')).toContain('st-success');
    expect(await cell(OK, 'email_on_failure').textContent()).toBe('·');
    expect(await page.locator(`#grid tr[data-date="${FAILED}"]`).getAttribute('data-status')).toBe('failed');
    expect(await cell(FAILED, 'send_flg_to_sap').textContent()).toBe('✗');
    expect(await cell(FAILED, 'send_flg_to_sap').getAttribute('class')).toContain('st-failed');
    expect(await cell(FAILED, 'load_ds_client_segmentation').textContent()).toBe('✓');
    // The colour comes from the stylesheet, so the policy let it apply.
    expect(await cell(FAILED, 'send_flg_to_sap').evaluate((e) => getComputedStyle(e).color)).toBe('rgb(198, 40, 40)');
    expect(await page.locator('#grid th[data-step="wait_for_l2_full_load"]').getAttribute('title')).toBe('wait_for_l2_full_load');
    await page.screenshot({ path: `${ARTIFACTS}/grid-1280x800.png` });
    await page.close();
  });

  it('a new run appears in the open grid and reaches success without a reload', async () => {
    const page = await open('/');
    await page.locator(`#grid tr[data-date="${OK}"]`).waitFor();
    await page.locator('#live.on').waitFor();
    await page.evaluate(() => (window.notReloaded = true));
    expect((await fx.call('POST', '/api/runs', { json: { date: LIVE } })).status).toBe(201);
    const row = page.locator(`#grid tr[data-date="${LIVE}"]`);
    await row.waitFor({ timeout: 10_000 });
    await flag(LIVE);
    await page.locator(`#grid tr[data-date="${LIVE}"][data-status="success"]`).waitFor({ timeout: 20_000 });
    expect(await row.locator('td[data-step="send_flg_to_sap"]').textContent()).toBe('✓');
    expect(await page.evaluate(() => window.notReloaded)).toBe(true);
    await page.close();
  });

  it("the failed run's page marks send_flg_to_sap failed in the statechart, shows the error, and dry-runs a clear", async () => {
    const page = await open(`/runs/${FAILED}`);
    const state = (key: string) => page.locator(`#statechart [data-state="${key}"]`);
    await state('send_flg_to_sap').waitFor();
    expect(await state('send_flg_to_sap').getAttribute('data-mark')).toBe('failed');
    expect(await state('send_flg_to_sap').getAttribute('class')).toBe('mark-failed');
    expect(await state('send_flg_to_sap').locator('rect').first().evaluate((e) => getComputedStyle(e).fill)).toBe('rgb(255, 205, 210)');
    expect(await state('wait_for_l2_full_load').getAttribute('data-mark')).toBe('done');
    expect(await state('failed').getAttribute('data-mark')).toBe('failed');
    expect(await page.locator('#statechart [data-state="branches"] text').first().textContent()).toContain('(parallel)');
    expect(await page.locator('#failure').textContent()).toMatch(/SAP_HTTP_ERROR.*400/s);
    expect(await page.locator('#timeline tr[data-step="send_flg_to_sap"]').getAttribute('data-state')).toBe('failed');
    await page.screenshot({ path: `${ARTIFACTS}/run-1280x800.png`, fullPage: true });

    await page.locator('#clear').click();
    await page.locator('#clear-plan:not([hidden])').waitFor();
    expect(await page.locator('#clear-plan').textContent()).toContain('send_flg_to_sap');
    expect((await fx.call('GET', `/api/runs/${FAILED}`)).body.status).toBe('failed'); // a dry run changes nothing
    await page.close();
  });

  it('the Trigger button queues a run through the API, asking for the token once; the waiting run shows its sensor', async () => {
    const page = await open('/');
    await page.locator('#grid').waitFor();
    await page.locator('#trigger input[name="date"]').fill(TRIGGERED);
    await page.locator('#trigger button').click();
    await page.locator(`#grid tr[data-date="${TRIGGERED}"]`).waitFor({ timeout: 10_000 });
    const run = await fx.call('GET', `/api/runs/${TRIGGERED}`);
    expect(run.body).toMatchObject({ run_id: `manual__${TRIGGERED}` });
    expect(run.body.audit).toEqual(expect.arrayContaining([expect.objectContaining({ action: 'trigger', actor: 'ops' })]));
    expect(await page.evaluate(() => sessionStorage.getItem('l2flow.token'))).toBe(SECRETS.token);
    await page.close();

    // Nobody inserts its flag: its page shows what the sensor waits for, its last check and its deadline.
    const waiting = await open(`/runs/${TRIGGERED}`);
    await waiting.locator('#waiting').waitFor({ timeout: 10_000 });
    const text = await waiting.locator('#waiting').textContent();
    expect(text).toContain(`flag '${FLAG}' in md.dwh_flag for business date ${addDays(TRIGGERED, -1)}`);
    expect(text).toMatch(/deadline\d{1,2}\/\d{1,2}\/\d{4}/);
    expect(await waiting.locator('#statechart [data-state="wait_for_l2_full_load"]').getAttribute('data-mark')).toBe('waiting');
    await waiting.close();
  });

  it('"Keep as is" changes nothing, "Confirm clear" re-runs the failed run to success, "Cancel run" stops a waiting run', async () => {
    const page = await open(`/runs/${FAILED}`);
    await page.locator('#clear').click();
    await page.locator('#clear-plan:not([hidden])').waitFor();
    await page.getByRole('button', { name: 'Keep as is' }).click();
    await page.locator('#clear-plan').waitFor({ state: 'hidden' });
    const kept = await fx.call('GET', `/api/runs/${FAILED}`);
    expect(kept.body).toMatchObject({ status: 'failed', attempt: 1 });

    await page.locator('#clear').click();
    await page.locator('#confirm-clear').click();
    await page.locator('#message', { hasText: `cleared ${FAILED}` }).waitFor();
    expect(await settled(FAILED, 30_000)).toBe('success'); // SAP answers 200 again: the cleared run goes through
    const cleared = await fx.call('GET', `/api/runs/${FAILED}`);
    expect(cleared.body.attempt).toBe(2);
    expect(cleared.body.audit).toEqual(expect.arrayContaining([expect.objectContaining({ action: 'clear', actor: 'ops' })]));
    await page.close();

    // The Trigger test's run still waits for its flag; the browser's confirm() is accepted by open()'s dialog handler.
    const waiting = await open(`/runs/${TRIGGERED}`);
    await waiting.locator('#cancel:not([disabled])').click();
    await waiting.locator('#message', { hasText: `cancelled ${TRIGGERED}` }).waitFor();
    expect(await settled(TRIGGERED)).toBe('cancelled');
    await waiting.close();
  });

  it('fits a phone: the grid scrolls inside its box, the run page stacks; nothing left 127.0.0.1', async () => {
    const phone = { width: 390, height: 844 };
    const grid = await open('/', phone);
    await grid.locator(`#grid tr[data-date="${FAILED}"]`).waitFor();
    const widths = await grid.evaluate(() => ({ page: document.documentElement.scrollWidth, box: document.querySelector('.scroller').scrollWidth, shown: document.querySelector('.scroller').clientWidth }));
    expect(widths.page).toBeLessThanOrEqual(phone.width);
    expect(widths.box).toBeGreaterThan(widths.shown);
    await grid.screenshot({ path: `${ARTIFACTS}/grid-390x844.png` });
    const run = await open(`/runs/${FAILED}`, phone);
    await run.locator('#statechart svg').waitFor();
    expect(await run.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(phone.width);
    await run.screenshot({ path: `${ARTIFACTS}/run-390x844.png`, fullPage: true });
    await Promise.all([grid.close(), run.close()]);

    const origin = new URL(fx.url).origin;
    expect(requested.length).toBeGreaterThan(10);
    expect(requested.filter((u) => !u.startsWith(`${origin}/`))).toEqual([]);
    expect(consoleErrors.filter((m) => /Content Security Policy|Refused/i.test(m))).toEqual([]);
  });
});
