// The hub's defences against web pages (PROTOCOL.md §2) in a real Chromium,
// driven by playwright-core. Run by tests/test_dashboard.py, which starts
// two hubs and passes:
//   ARC_URL    a hub without a token (http://127.0.0.1:PORT)
//   TOKEN_URL  a hub in network mode (--host 0.0.0.0 --allow-remote) with
//   TOKEN      this token
//   OUT_DIR    where screenshots go (tests/out); CHROMIUM the browser binary
// To play DNS rebinding on the plain hub's port it prints "@@stop" (the
// harness stops that hub and answers "stopped") and "@@start" (the harness
// starts it again on the same port and storage, and answers "started").
// Prints "ok - CHECK" per check; exits 1 on the first failure.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { sleep, until } from './wait.mjs';

const BASE = process.env.ARC_URL;
const TBASE = process.env.TOKEN_URL;
const TOKEN = process.env.TOKEN;
const OUT = process.env.OUT_DIR || 'tests/out';
const EXE = process.env.CHROMIUM || '/usr/bin/chromium';
if (!BASE || !TBASE || !TOKEN) { console.error('ARC_URL, TOKEN_URL, TOKEN needed'); process.exit(2); }
const PORT = new URL(BASE).port;
// rebind.test plays a DNS-rebinding domain (it resolves to 127.0.0.1).
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
  '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--host-resolver-rules=MAP rebind.test 127.0.0.1'];
mkdirSync(OUT, { recursive: true });
const tag = 'xo' + Math.random().toString(36).slice(2, 8);
function ok(name) { console.log('ok - ' + name); }
const stdin = createInterface({ input: process.stdin });
const stdinLines = stdin[Symbol.asyncIterator]();
async function harness(cmd, want) {
  console.log('@@' + cmd);
  const reply = await stdinLines.next();
  assert.equal(reply.value, want, 'harness did not ' + cmd);
}

// The API as a client that is not a browser (no Origin): to check results.
async function api(base, method, path, body, token) {
  const headers = {};
  if (body) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = 'Bearer ' + token;
  const r = await fetch(base + path, { method, headers,
                                       body: body ? JSON.stringify(body) : undefined });
  return { status: r.status, ...(await r.json()) };
}
async function landed(base, prefix, token) {
  const r = await api(base, 'GET', '/v1/messages?channel=general&tail=1&limit=500', null, token);
  assert.equal(r.ok, true, JSON.stringify(r));
  return r.result.filter(m => m.body.startsWith(prefix)).map(m => m.body);
}

// The attacker's page: a no-cors fetch with a simple content type, a
// beacon, a text/plain form post (whose body is valid JSON), and a read.
function attackPage(label) {
  const b = JSON.stringify(BASE);
  const field = `{"from_agent":"evil","body":"${tag}-${label}-form","x":"`;
  return `<!doctype html><title>attack</title>
<iframe name='sink'></iframe>
<form id='f' method='POST' action='${BASE}/v1/messages' enctype='text/plain' target='sink'>
<input name='${field}' value='"}'></form>
<script>
(async () => {
  const base = ${b};
  const post = what => JSON.stringify({ from_agent: 'evil', body: '${tag}-${label}-' + what });
  let fetched = 'sent';
  try {
    await fetch(base + '/v1/messages', { method: 'POST', mode: 'no-cors',
      headers: { 'Content-Type': 'text/plain' }, body: post('fetch') });
  } catch (e) { fetched = 'error'; }
  try { navigator.sendBeacon(base + '/v1/messages', post('beacon')); } catch (e) {}
  let read;
  try { read = await (await fetch(base + '/v1/hub-info')).text(); } catch (e) { read = 'blocked'; }
  document.getElementById('f').submit();
  document.title = 'done ' + fetched + ' ' + read;
})();
</script>`;
}

// A DNS-rebinding page: loaded from http://rebind.test:PORT/ while the
// attacker serves that port; once the name leads to the hub, its requests
// to the hub are same-origin, and only the Host check stops them.
const rebindPage = `<!doctype html><title>ready</title><script>
window.go = () => (async () => {
  const r1 = await fetch('/v1/messages', { method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ from_agent: 'evil', body: '${tag}-rebind' }) });
  const r2 = await fetch('/v1/messages?channel=general');
  document.title = 'done ' + r1.status + ' ' + r2.status + ' ' + (await r2.text());
})().catch(e => { document.title = 'error ' + e; });
</script>`;

// A page that frames the dashboard (clickjacking): the hub forbids it.
const framePage = `<!doctype html><title>frame</title>
<iframe id='dash' src='${BASE}/' width='800' height='600'></iframe>`;

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const label = url.searchParams.get('label') || 'page';
  res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
  res.end(url.pathname === '/frame' ? framePage : attackPage(label));
});
await new Promise(r => server.listen(0, '127.0.0.1', r));
const ATT = server.address().port;

const userDir = mkdtempSync(join(tmpdir(), 'arc-sec-'));
const ctx = await chromium.launchPersistentContext(userDir, {
  executablePath: EXE, headless: true, args: ARGS, viewport: { width: 1280, height: 800 } });
const page = ctx.pages()[0] || await ctx.newPage();
const errors = [], dialogs = [];
let phase = 'attack';
page.on('console', m => { if (m.type() === 'error') errors.push([phase, m.text()]); });
page.on('pageerror', e => errors.push([phase, 'pageerror: ' + e.message]));
page.on('dialog', d => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
const hubAnswers = [];
page.on('response', r => {
  if (r.url().startsWith(BASE + '/v1/'))
    hubAnswers.push([r.request().resourceType(), r.request().method(), r.status()]);
});

try {
  // 1. Pages of other origins: cross-site (localhost vs 127.0.0.1) and
  // same-site (another port of 127.0.0.1). Nothing they send lands.
  for (const [label, origin] of [['xsite', `http://localhost:${ATT}`],
                                 ['samesite', `http://127.0.0.1:${ATT}`]]) {
    hubAnswers.length = 0;
    const form = page.waitForResponse(r => r.url() === BASE + '/v1/messages' &&
                                           r.request().resourceType() === 'document');
    await page.goto(`${origin}/attack?label=${label}`);
    await until('attack page done', async () => (await page.title()).startsWith('done'));
    const title = await page.title();
    assert.match(title, /^done sent blocked$/, 'the page could not read an answer: ' + title);
    assert.equal((await form).status(), 403, 'form post refused');
    const posts = hubAnswers.filter(([, m]) => m === 'POST');
    assert.ok(posts.length >= 2, 'fetch and form reached the hub: ' + JSON.stringify(hubAnswers));
    assert.deepEqual(posts.filter(([, , s]) => s !== 403), [], JSON.stringify(hubAnswers));
    const body = await page.frameLocator('iframe').locator('body').textContent();
    assert.match(body, /cross-origin request refused/);
    ok(`${label}: fetch (no-cors, text/plain), beacon and form post answered 403`);
  }
  await sleep(300);   // a late beacon would have landed by now
  assert.deepEqual(await landed(BASE, tag), [], 'nothing posted by the attack pages');
  ok('no message of the attack pages in the hub');

  // 1b. A page of another origin cannot frame the dashboard.
  const framed = page.waitForResponse(r => r.url() === BASE + '/');
  await page.goto(`http://localhost:${ATT}/frame`);
  const headers = (await framed).headers();
  assert.equal(headers['x-frame-options'], 'DENY');
  assert.match(headers['content-security-policy'], /frame-ancestors 'none'/);
  await sleep(500);
  const child = page.frames().find(f => f !== page.mainFrame());
  assert.ok(child, 'the iframe exists');
  assert.equal(await child.locator('#me').count(), 0, 'the dashboard rendered in a frame');
  ok('a page of another origin cannot frame the dashboard');

  // 2. DNS rebinding: the attacker serves the page on the hub's port, then
  // the name leads to the hub (here: the hub comes back on that port).
  phase = 'rebind';
  await harness('stop', 'stopped');
  const evil = createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(rebindPage);
  });
  await new Promise(r => evil.listen(Number(PORT), '127.0.0.1', r));
  await page.goto(`http://rebind.test:${PORT}/`);
  await until('rebind page loaded', async () => (await page.title()) === 'ready');
  evil.closeAllConnections();
  await new Promise(r => evil.close(r));
  await harness('start', 'started');
  await page.evaluate(() => window.go());
  await until('rebind page done', async () => /^(done|error)/.test(await page.title()));
  const rt = await page.title();
  assert.match(rt, /^done 403 403 /, rt);
  assert.match(rt, /Host not allowed: rebind\.test/);
  assert.doesNotMatch(rt, /"result"/, 'nothing read');
  assert.deepEqual(await landed(BASE, tag + '-rebind'), []);
  ok('rebinding page: its same-origin POST and GET reach the hub and get 403 (Host)');

  // 3. The dashboard of a hub in network mode with a token: it asks for
  // the token, refuses a wrong one, keeps the right one in sessionStorage,
  // and its event stream works with it.
  phase = 'login';
  await page.goto(TBASE + '/');
  await page.locator('#auth:not([hidden])').waitFor({ timeout: 5000 });
  assert.equal(await page.locator('#conn.live').count(), 0);
  await page.fill('#token', 'not-the-token');
  await page.click('#auth button');
  await page.locator('#auth:not([hidden]) #autherr.err', { hasText: 'refused' })
    .waitFor({ timeout: 5000 });
  ok('token hub: the page asks for the token and refuses a wrong one');
  await page.fill('#token', TOKEN);
  await page.click('#auth button');
  await page.locator('#auth').waitFor({ state: 'hidden', timeout: 5000 });
  await page.locator('#conn.live').waitFor({ timeout: 5000 });
  await page.locator('#me', { hasText: 'operator' }).waitFor();
  phase = 'token';
  const stored = await page.evaluate(() => [sessionStorage.getItem('arc.token'),
    localStorage.getItem('arc.token'), document.cookie]);
  assert.deepEqual(stored, [TOKEN, null, ''], 'token in sessionStorage only');
  const m1 = await api(TBASE, 'POST', '/v1/messages',
                       { from_agent: 'alice', body: 'live with a token ' + tag }, TOKEN);
  assert.equal(m1.status, 201);
  await page.locator(`#rows .msg[data-id='${m1.result.id}']`).waitFor({ timeout: 2000 });
  ok('right token: live; a message posted through the API arrives on the stream');
  await page.fill('#input', 'typed with a token ' + tag);
  await page.press('#input', 'Enter');
  await until('typed message stored', async () =>
    (await landed(TBASE, 'typed with a token ' + tag, TOKEN)).length === 1);
  ok('typing posts with the token');
  await page.reload();
  await page.locator('#conn.live').waitFor({ timeout: 5000 });
  assert.equal(await page.locator('#auth').isHidden(), true, 'no question after a reload');
  const m2 = await api(TBASE, 'POST', '/v1/messages',
                       { from_agent: 'alice', body: 'after reload ' + tag }, TOKEN);
  await page.locator(`#rows .msg[data-id='${m2.result.id}']`).waitFor({ timeout: 2000 });
  await page.screenshot({ path: join(OUT, 'dashboard-token.png') });
  ok('after a reload the tab still has the token and stays live');

  // 4. A fresh tab (new sessionStorage) is asked again.
  const tab2 = await ctx.newPage();
  await tab2.goto(TBASE + '/');
  await tab2.locator('#auth:not([hidden])').waitFor({ timeout: 5000 });
  await tab2.screenshot({ path: join(OUT, 'dashboard-login.png') });
  await tab2.close();
  ok('another tab is asked for the token again');

  // Console errors: only the expected 401s of the login phase.
  const bad = errors.filter(([ph, t]) => ph !== 'attack' && ph !== 'rebind' &&
                                          !(ph === 'login' && /status of 401/.test(t)));
  assert.deepEqual(bad, [], 'unexpected console errors');
  assert.deepEqual(dialogs, [], 'dialogs');
  console.log('security: all checks passed');
} catch (e) {
  console.log('FAIL - ' + (e && e.stack || e));
  console.log('console errors: ' + JSON.stringify(errors));
  console.log('hub answers: ' + JSON.stringify(hubAnswers));
  await page.screenshot({ path: join(OUT, 'security-failure.png') }).catch(() => {});
  process.exitCode = 1;
} finally {
  await ctx.close();
  server.close();
  stdin.close();
  rmSync(userDir, { recursive: true, force: true });
}
