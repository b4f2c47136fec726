// The dashboard (GET /) in a real Chromium, driven by playwright-core.
// Run by tests/test_dashboard.py, which starts the hub and passes:
//   ARC_URL   the hub's base url (http://127.0.0.1:PORT)
//   OUT_DIR   where screenshots go (tests/out)
//   CHROMIUM  the browser binary (default /usr/bin/chromium)
// To restart the hub on the same port it prints "@@restart" and waits for a
// line on stdin. Prints "ok - CHECK" per check; exits 1 on the first failure.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep, until } from './wait.mjs';
import { createInterface } from 'node:readline';

const BASE = process.env.ARC_URL;
const OUT = process.env.OUT_DIR || 'tests/out';
const EXE = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
  '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync'];
if (!BASE) { console.error('ARC_URL is not set'); process.exit(2); }
mkdirSync(OUT, { recursive: true });

const stdin = createInterface({ input: process.stdin });
const stdinLines = stdin[Symbol.asyncIterator]();
const tag = Math.random().toString(36).slice(2, 8);

async function api(method, path, body) {
  const r = await fetch(BASE + path, {
    method, headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined });
  const j = await r.json();
  return { status: r.status, ...j };
}
async function post(from, body, extra = {}) {
  const r = await api('POST', '/v1/messages', { from_agent: from, body, ...extra });
  assert.equal(r.ok, true, JSON.stringify(r));
  return r.result;
}
function ok(name) { console.log('ok - ' + name); }

const userDir = mkdtempSync(join(tmpdir(), 'arc-dash-'));
const ctx = await chromium.launchPersistentContext(userDir, {
  executablePath: EXE, headless: true, args: ARGS, viewport: { width: 1280, height: 800 } });
const page = ctx.pages()[0] || await ctx.newPage();
let phase = 'load';
const errors = [], dialogs = [];
page.on('console', m => { if (m.type() === 'error') errors.push([phase, m.text()]); });
page.on('pageerror', e => errors.push([phase, 'pageerror: ' + e.message]));
page.on('dialog', d => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
const requests = [];
page.on('request', r => requests.push(r.method() + ' ' + new URL(r.url()).pathname));
const row = id => page.locator(`#rows .msg[data-id='${id}']`);
async function type(text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
}
function pageErrors() {
  return errors.filter(([ph, text]) => ph !== 'refused' &&
    !(ph === 'restart' && /ERR_CONNECTION_REFUSED|Failed to load resource/.test(text)));
}

try {
  // 1. Loads cleanly, registers the operator, opens the stream.
  await page.goto(BASE + '/');
  await page.locator('#conn.live').waitFor({ timeout: 5000 });
  await page.locator('#me', { hasText: 'operator' }).waitFor();
  await sleep(500);
  assert.deepEqual(pageErrors(), [], 'console errors on load');
  const agents0 = await api('GET', '/v1/agents');
  assert.ok(agents0.result.some(a => a.agent_id === 'operator'), 'operator registered');
  ok('page loads without console errors; operator registered; stream live');
  phase = 'run';

  // 2. A message posted through the API appears within 1 s.
  await api('POST', '/v1/sessions', { agent_id: 'alice', capabilities: ['python', 'review'],
                                      replace: true });
  const m1 = await post('alice', 'hello from the API ' + tag);
  const t0 = Date.now();
  await row(m1.id).waitFor({ timeout: 1000 });
  assert.match(await row(m1.id).innerText(), new RegExp('hello from the API ' + tag));
  ok(`API message shown in ${Date.now() - t0} ms`);

  // 3. Typing posts into the current channel.
  await type('typed in the browser ' + tag);
  const typed = await until('typed message in the API', async () => {
    const r = await api('GET', '/v1/messages?channel=general&tail=1&limit=20');
    return r.result.find(m => m.body === 'typed in the browser ' + tag &&
                              m.from_agent === 'operator');
  });
  await row(typed.id).waitFor({ timeout: 1000 });
  ok('typed message posted by operator and shown');

  // 4. /dm bob hi
  await type('/dm bob hi');
  await until('dm in /v1/inbox/bob', async () => {
    const r = await api('GET', '/v1/inbox/bob');
    return r.result.find(m => m.from_agent === 'operator' && m.body === 'hi');
  });
  ok('/dm bob hi reached inbox of bob');

  // 5. A DM to the operator lands in the operator inbox.
  const dm = await post('alice', 'psst operator ' + tag, { to_agent: 'operator' });
  await page.locator('#inbox .item', { hasText: 'psst operator ' + tag })
    .waitFor({ timeout: 1000 });
  assert.equal(await row(dm.id).count(), 0, 'a DM is not shown in the channel feed');
  ok('DM to operator shown in the inbox');

  // 6. /channel NAME switches the feed.
  const ch = 'ops-' + tag;
  await api('POST', '/v1/channels', { name: ch });
  const m2 = await post('alice', 'over in ops ' + tag, { channel: ch });
  await type('/channel ' + ch);
  await row(m2.id).waitFor({ timeout: 2000 });
  assert.equal(await row(m1.id).count(), 0, 'general message left the feed');
  assert.equal(await page.locator('#viewname').innerText(), '#' + ch);
  assert.equal(await page.inputValue('#ch'), ch);
  const m3 = await post('alice', 'live in ops ' + tag, { channel: ch });
  await row(m3.id).waitFor({ timeout: 1000 });
  await type('/channel general');
  await row(m1.id).waitFor({ timeout: 2000 });
  ok('/channel switches the feed (and back)');

  // 7. A newly registered agent appears in the agent list (refresh <= 10 s).
  const newbie = 'newbie-' + tag;
  await api('POST', '/v1/sessions', { agent_id: newbie, capabilities: ['rust', 'tests'] });
  const t1 = Date.now();
  const seen = requests.length;
  await page.locator('#agents .item', { hasText: newbie }).waitFor({ timeout: 12000 });
  const polls = requests.slice(seen).filter(r => /v1.(messages|events|inbox)/.test(r));
  assert.deepEqual(polls, [], 'messages are never polled');
  assert.match(await page.locator('#agents .item', { hasText: newbie }).innerText(), /rust/);
  ok(`new agent listed after ${Date.now() - t1} ms, with capabilities`);

  // 7b. A value put in the shared memory (arc:kv) shows in the Memory panel,
  // and a change to it follows (its notice in channel memory triggers a reload).
  const memKey = 'decisions/' + tag;
  let kv = await api('PUT', '/v1/kv/' + encodeURIComponent(memKey),
                     { agent_id: 'alice', value: { db: 'postgres' }, type: 'decision' });
  assert.equal(kv.status, 201, JSON.stringify(kv));
  const memRow = page.locator('#memory .item', { hasText: memKey });
  await memRow.waitFor({ timeout: 5000 });
  assert.match(await memRow.innerText(), /postgres/);
  assert.match(await memRow.innerText(), /decision/);
  kv = await api('PUT', '/v1/kv/' + encodeURIComponent(memKey),
                 { agent_id: 'bob', value: { db: 'sqlite' }, version: 1 });
  assert.equal(kv.status, 200, JSON.stringify(kv));
  await page.locator('#memory .item', { hasText: 'sqlite' }).waitFor({ timeout: 5000 });
  assert.match(await memRow.innerText(), /v2/);
  ok('a value put via /v1/kv shows in the Memory panel, and its update follows');

  // 8. Markup in a body is shown as text, never run.
  const evil = '<img src=x onerror=alert(1)>';
  const m4 = await post('mallory', evil, {
    attachments: [{ type: 'text', content: '<script>alert(2)</script>' },
                  { type: 'file_ref', path: '<b>x</b>.c', description: '<i>d</i>' }] });
  await row(m4.id).waitFor({ timeout: 1000 });
  assert.equal(await row(m4.id).locator('.b').textContent(), evil);
  await row(m4.id).locator('details summary').click();
  await sleep(300);
  assert.equal(await page.locator('#feed img, #feed script, #feed b, #feed i').count(), 0);
  assert.deepEqual(dialogs, [], 'a dialog fired');
  ok('HTML in bodies and attachments rendered as text; no dialog');

  // 9. Hub refusals are shown: /network on on a loopback hub. (Chromium logs
  // every 4xx answer to fetch() as a console error; this one is expected.)
  phase = 'refused';
  await type('/network on');
  await page.locator('.local.err', { hasText: 'cannot enable remote access' })
    .waitFor({ timeout: 2000 });
  ok("/network on shows the hub's error");
  await sleep(200);
  const refused = errors.filter(([ph]) => ph === 'refused').map(([, t]) => t);
  assert.equal(refused.length, 1, 'exactly the one refusal logged: ' + refused);
  assert.match(refused[0], /status of 400/);
  phase = 'run';

  // 10. /quit 120 shows the banner with a countdown, /cancel removes it.
  await type('/quit 120');
  await page.locator('#banner:not([hidden])', { hasText: /Hub shutdown in (1m 5\ds|2m 00s)/ })
    .waitFor({ timeout: 2000 });
  assert.notEqual((await api('GET', '/v1/shutdown')).result, null);
  await type('/cancel');
  await page.locator('#banner').waitFor({ state: 'hidden', timeout: 2000 });
  assert.equal((await api('GET', '/v1/shutdown')).result, null);
  ok('/quit 120 shows a countdown banner; /cancel clears it');

  // 11. 10,000 messages in a channel: only a window is rendered; paging back.
  const big = 'big-' + tag;
  await api('POST', '/v1/channels', { name: big });
  const ids = [];
  for (let i = 0; i < 10000; i += 50) {
    const batch = [];
    for (let k = i; k < i + 50; k++)
      batch.push(post('loader', 'bulk message ' + k, { channel: big })
        .then(m => { ids[k] = m.id; }));
    await Promise.all(batch);
  }
  ids.sort((a, b) => a - b);
  const t2 = Date.now();
  await type('/channel ' + big);
  await row(ids[9999]).waitFor({ timeout: 3000 });
  const shown = await page.locator('#rows .msg').count();
  assert.equal(shown, 500, 'rendered rows after switching');
  ok(`10,000-message channel opened in ${Date.now() - t2} ms with ${shown} rows`);
  await page.click('#older');
  await row(ids[9000]).waitFor({ timeout: 5000 });
  const firstId = Number(await page.locator('#rows .msg').first().getAttribute('data-id'));
  assert.equal(firstId, ids[9000], 'older page is the 500 messages before the window');
  assert.equal(await page.locator('#rows .msg').count(), 1000);
  for (const k of [8500, 8000]) {
    await page.click('#older');
    await row(ids[k]).waitFor({ timeout: 5000 });
  }
  assert.ok(await page.locator('#rows .msg').count() <= 1500, 'window stays bounded');
  assert.ok(await page.locator('#jump').isVisible(), 'jump to latest offered');
  await page.click('#jump');
  await row(ids[9999]).waitFor({ timeout: 3000 });
  assert.equal(await page.locator('#rows .msg').count(), 500);
  ok('load older pages back exactly; window bounded; jump to latest');
  await type('/channel general');
  await row(m1.id).waitFor({ timeout: 3000 });

  // 11b. Channels named like JavaScript built-ins are just names: no
  // prototype's value leaks into their labels or unread counts.
  const builtins = ['__proto__', 'constructor', 'toString', 'hasOwnProperty'];
  for (const name of builtins)
    assert.equal((await api('POST', '/v1/channels', { name })).ok, true, name);
  await type('/channels');
  const labels = async () => (await page.locator('#ch option').allTextContents())
    .filter(t => builtins.some(n => t.startsWith('#' + n)));
  await until('built-in names listed', async () => (await labels()).length === 4);
  assert.deepEqual((await labels()).sort(), builtins.map(n => '#' + n).sort());
  for (const name of builtins) await post('alice', 'to ' + name + ' ' + tag, { channel: name });
  await until('unread counts shown', async () =>
    (await labels()).every(t => t.endsWith('  (1)')));
  assert.deepEqual((await labels()).sort(), builtins.map(n => '#' + n + '  (1)').sort());
  await type('/channel constructor');
  await until('unread count cleared', async () => (await labels()).includes('#constructor'));
  await type('/channel general');
  await row(m1.id).waitFor({ timeout: 3000 });
  ok('channels named __proto__, constructor, toString: plain labels and counts');

  // 12. Hub restart: the page reconnects and resumes by id.
  phase = 'restart';
  console.log('@@restart');
  const reply = await stdinLines.next();
  assert.equal(reply.value, 'restarted', 'harness did not restart the hub');
  const m5 = await post('alice', 'after the restart ' + tag);   // before reconnecting
  await row(m5.id).waitFor({ timeout: 8000 });
  await page.locator('#conn.live').waitFor({ timeout: 5000 });
  const m6 = await post('alice', 'live again ' + tag);
  await row(m6.id).waitFor({ timeout: 1000 });
  ok('reconnected after a hub restart; missed and new messages shown');
  phase = 'after';

  // 13. Some realistic state, then screenshots at 1280 px and 360 px.
  await api('POST', '/v1/sessions', { agent_id: 'builder', display_name: 'Builder bot',
    capabilities: ['c', 'make', 'asan'], replace: true });
  const task = await post('alice', 'Port the relay GC to the new spool layout',
                          { kind: 'task', thread_id: 'relay-gc' });
  await api('POST', '/v1/claims', { owner_agent_id: 'builder', task_message_id: task.id,
                                    thread_id: 'relay-gc', ttl_sec: 900 });
  await api('POST', '/v1/locks', { agent_id: 'builder', file_path: 'src/relay.c',
                                   ttl_sec: 600, metadata: { thread_id: 'relay-gc' } });
  await post('builder', 'claiming it', { kind: 'claim', thread_id: 'relay-gc',
                                         reply_to: task.id });
  await post('builder', 'patch ready', { kind: 'artifact', thread_id: 'relay-gc',
    attachments: [{ type: 'diff_ref', path: 'src/relay.c', base: 'main', head: 'relay-gc' },
                  { type: 'code', language: 'c',
                    content: 'int gc(void) {\n    return 0;\n}\n' }] });
  await post('builder', 'can you review src/relay.c?', { to_agent: 'operator' });
  await page.locator('#tasks .item', { hasText: 'Port the relay GC' }).waitFor({ timeout: 3000 });
  await page.locator('#locks .item', { hasText: 'src/relay.c' }).waitFor({ timeout: 3000 });
  await page.locator('#claims .item', { hasText: 'task-' + task.id }).waitFor({ timeout: 3000 });
  ok('tasks, claims and locks listed');
  // A task that waits for another is marked blocked (PROTOCOL §13).
  const after = await post('alice', 'Ship the relay GC', { kind: 'task', thread_id: 'relay-gc',
                                                           metadata: { blocked_by: [task.id] } });
  await page.locator('#tasks .item.blocked', { hasText: 'waits for #' + task.id })
    .waitFor({ timeout: 3000 });
  assert.equal(await page.locator('#tasks .item.blocked').count(), 1);
  ok('blocked task marked, #' + after.id);
  await page.selectOption('#th', 'relay-gc');
  await row(task.id).waitFor({ timeout: 2000 });
  assert.match(await page.locator('#viewname').innerText(), /thread relay-gc/);
  await type('reviewing now');
  const inThread = await until('message posted into the thread', async () => {
    const r = await api('GET', '/v1/messages?thread_id=relay-gc');
    return r.result.find(m => m.body === 'reviewing now' && m.from_agent === 'operator');
  });
  assert.equal(inThread.channel, 'general');
  ok('thread picker shows the thread; typing posts into it');
  // Search box (PROTOCOL §13): ranked hits with the match marked; the
  // operator's own DM found, another agent's not.
  await post('carol', 'needle' + tag + ' for operator', { to_agent: 'operator' });
  await post('carol', 'needle' + tag + ' for dave', { to_agent: 'dave' });
  await post('carol', 'needle' + tag + ' in public');
  await page.fill('#q', 'needle' + tag);
  await until('two hits (the hub indexes its history in chunks)', async () => {
    await page.press('#q', 'Enter');
    await sleep(200);
    return (await page.locator('#hits .hit').count()) === 2;
  });
  await page.locator('#hits .hit mark', { hasText: 'needle' + tag }).first().waitFor();
  assert.equal(await page.locator('#hits .hit', { hasText: 'for dave' }).count(), 0);
  await page.fill('#q', '"(NEAR');
  await page.press('#q', 'Enter');
  await page.locator('#hits .none').waitFor({ timeout: 3000 });
  ok('search box: ranked hits, marked matches, DM privacy, odd queries');
  await page.selectOption('#th', '');
  await row(m6.id).waitFor({ timeout: 2000 });
  await sleep(300);
  await page.screenshot({ path: join(OUT, 'dashboard.png') });

  await page.setViewportSize({ width: 360, height: 740 });
  await sleep(300);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 360, 'horizontal overflow at 360 px: ' + width);
  await page.screenshot({ path: join(OUT, 'dashboard-360.png') });
  await page.click("#tabs button[data-tab='work']");
  await page.locator('#tasks .item').first().waitFor({ state: 'visible' });
  await page.screenshot({ path: join(OUT, 'dashboard-360-work.png') });
  await page.click("#tabs button[data-tab='feed']");
  await page.locator('#input').waitFor({ state: 'visible' });
  ok('screenshots at 1280 px and 360 px; no horizontal overflow');

  assert.deepEqual(pageErrors(), [], 'console errors');
  assert.deepEqual(dialogs, [], 'dialogs');
  ok('no console errors and no dialogs overall');
  console.log('dashboard: all checks passed');
} catch (e) {
  console.log('FAIL - ' + (e && e.stack || e));
  console.log('console errors: ' + JSON.stringify(errors));
  await page.screenshot({ path: join(OUT, 'dashboard-failure.png') }).catch(() => {});
  process.exitCode = 1;
} finally {
  await ctx.close();
  stdin.close();
  rmSync(userDir, { recursive: true, force: true });
}
