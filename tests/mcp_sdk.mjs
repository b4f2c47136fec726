// `arc mcp` driven by the official MCP TypeScript SDK clients over stdio.
//
// The clients are @modelcontextprotocol/sdk (v1) and @modelcontextprotocol/client
// (v2), both installed in tests/node_modules from tests/package.json.
// tests/test_mcp_sdk.py runs one scenario per test:
//
//   node tests/mcp_sdk.mjs SCENARIO
//
// The environment supplies:
//   ARC_CMD       JSON array: the arc command (e.g. ["/path/to/arc"])
//   ARC_HUB_URL   a running hub (the Python test starts it)
//   ARC_MCP_LOG   file that receives the servers' stderr (checked for sanitizer reports)
//   ARC_MCP_CWD   working directory for the servers
//
// Exit status 0 and a last line "PASS <scenario>" mean success. Any other
// outcome is a failure: an assertion, an SDK error, an onerror report from a
// client (for instance a stdout line it could not parse), or a timeout.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Client as ClientV1 } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport as StdioV1 } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport as HttpV1 }
  from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Client as ClientV2 } from '@modelcontextprotocol/client';
import { StdioClientTransport as StdioV2 } from '@modelcontextprotocol/client/stdio';
import { StreamableHTTPClientTransport as HttpV2 } from '@modelcontextprotocol/client';
import Ajv from 'ajv';

const ARC = JSON.parse(process.env.ARC_CMD ?? '["arc"]');
const HUB = process.env.ARC_HUB_URL;
const LOG = process.env.ARC_MCP_LOG;
const CWD = process.env.ARC_MCP_CWD;
// ARC_MCP_TRANSPORT=http: every scenario talks to the hub's /mcp with the
// SDK's Streamable HTTP client instead of starting `arc mcp` (docs/MCP.md).
const OVER_HTTP = process.env.ARC_MCP_TRANSPORT === 'http';
const httpOptions = (agent) => ({ requestInit: { headers: { 'X-Arc-Agent': agent } } });
const TOOLS = [
  'arc_post_message', 'arc_poll_messages', 'arc_dm', 'arc_list_agents', 'arc_create_channel',
  'arc_rpc_call', 'arc_inbox', 'arc_read_thread', 'arc_claim', 'arc_lock', 'arc_tasks',
  'arc_task_result', 'arc_whoami', 'arc_kv', 'arc_search',
  'arc_ack', 'arc_receipts', 'arc_unanswered',
].sort();
const READ_ONLY = new Set(['arc_poll_messages', 'arc_list_agents', 'arc_inbox',
  'arc_read_thread', 'arc_whoami', 'arc_search', 'arc_receipts', 'arc_unanswered']);
const CALL = { timeout: 55_000 };       // per call; the server's waits stay under 50 s

const uid = (p) => `${p}-${Math.random().toString(36).slice(2, 10)}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log(...a);

// ── hub over HTTP: the other side of a conversation ──────────────────────

async function hub(method, path, body) {
  const res = await fetch(HUB + path, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const env = await res.json();
  assert.equal(env.ok, true, `${method} ${path}: ${res.status} ${JSON.stringify(env)}`);
  return env.result;
}

const post = (from, fields) => hub('POST', '/v1/messages', { from_agent: from, ...fields });

// Long-poll one agent's feed until a message matching pred arrives.
async function waitFor(agent, pred, deadlineMs = 20_000) {
  let since = 0;
  const end = Date.now() + deadlineMs;
  while (Date.now() < end) {
    const msgs = await hub('GET', `/v1/events?agent_id=${encodeURIComponent(agent)}` +
      `&since_id=${since}&timeout=2`);
    for (const m of msgs) {
      since = Math.max(since, m.id);
      if (pred(m)) return m;
    }
  }
  throw new Error(`no matching message for ${agent} within ${deadlineMs} ms`);
}

// ── clients ───────────────────────────────────────────────────────────────

let logFd;
function stderrTarget() {
  if (!LOG) return 'inherit';
  logFd ??= fs.openSync(LOG, 'a');
  return logFd;
}

// Everything a client receives, and every onerror report.
function tap(transport, c) {
  let handler;
  const wrapped = (msg, extra) => {
    c.received.push(msg);
    return handler?.(msg, extra);
  };
  Object.defineProperty(transport, 'onmessage', {
    configurable: true,
    get: () => (handler ? wrapped : undefined),
    set: (h) => { handler = h; },
  });
  const send = transport.send.bind(transport);
  transport.send = (msg, ...rest) => {
    c.sent.push(msg);
    return send(msg, ...rest);
  };
}

function serverParams(agent) {
  const [command, ...pre] = ARC;
  return {
    command,
    args: [...pre, 'mcp', '--agent', agent, '--base-url', HUB, '--no-autostart'],
    env: { ...process.env },
    cwd: CWD,
    stderr: stderrTarget(),
  };
}

const clients = [];

async function connectV1(agent) {
  const c = { agent, received: [], sent: [], errors: [], version: undefined };
  c.transport = OVER_HTTP ? new HttpV1(new URL(HUB + '/mcp'), httpOptions(agent))
    : new StdioV1(serverParams(agent));
  const setVersion = c.transport.setProtocolVersion?.bind(c.transport);
  c.transport.setProtocolVersion = (v) => { c.version = v; setVersion?.(v); };
  tap(c.transport, c);
  c.client = new ClientV1({ name: 'arc-test-v1', version: '1.0.0' }, { capabilities: {} });
  c.client.onerror = (e) => c.errors.push(e);
  clients.push(c);
  await c.client.connect(c.transport, { timeout: 20_000 });
  return c;
}

async function connectV2(agent) {
  const c = { agent, received: [], sent: [], errors: [] };
  c.transport = OVER_HTTP ? new HttpV2(new URL(HUB + '/mcp'), httpOptions(agent))
    : new StdioV2(serverParams(agent));
  tap(c.transport, c);
  c.client = new ClientV2({ name: 'arc-test-v2', version: '1.0.0' }, {
    capabilities: {},
    versionNegotiation: { mode: 'auto', probe: { timeoutMs: 10_000 } },
  });
  c.client.onerror = (e) => c.errors.push(e);
  clients.push(c);
  await c.client.connect(c.transport, { timeout: 20_000 });
  c.version = c.client.getNegotiatedProtocolVersion();
  return c;
}

const call = (c, name, args = {}, opts = {}) =>
  c.client.callTool({ name, arguments: args }, undefined, { ...CALL, ...opts });
const callV2 = (c, name, args = {}, opts = {}) =>
  c.client.callTool({ name, arguments: args }, { ...CALL, ...opts });

function text(r) {
  assert.ok(Array.isArray(r.content) && r.content.length, JSON.stringify(r));
  assert.equal(r.content[0].type, 'text');
  return r.content[0].text;
}

// A successful result: the text is the compact JSON of the result, which
// structuredContent repeats (a list, as arc_poll_messages and arc_list_agents
// give it, under its one key: structuredContent is an object).
function ok(r) {
  assert.ok(!r.isError, `tool error: ${JSON.stringify(r)}`);
  assert.equal(typeof r.structuredContent, 'object', JSON.stringify(r));
  const j = JSON.parse(text(r));
  assert.equal(text(r), JSON.stringify(j));
  if (Array.isArray(j)) assert.deepEqual(Object.values(r.structuredContent), [j]);
  else assert.deepEqual(r.structuredContent, j);
  return r.structuredContent;
}

async function listAndCheckTools(c) {
  const { tools } = await c.client.listTools();
  assert.deepEqual(tools.map((t) => t.name).sort(), TOOLS);
  const ajv = new Ajv({ strict: false, allErrors: true });
  for (const t of tools) {
    assert.ok(t.description?.trim(), t.name);
    assert.ok(t.title?.trim(), t.name);
    assert.equal(t.inputSchema.type, 'object', t.name);
    assert.equal(t.outputSchema.type, 'object', t.name);
    ajv.compile(t.inputSchema);     // throws on an invalid schema
    ajv.compile(t.outputSchema);
    for (const r of t.inputSchema.required ?? []) assert.ok(r in t.inputSchema.properties, t.name);
    assert.equal(t.annotations.readOnlyHint ?? false, READ_ONLY.has(t.name), t.name);
  }
  return tools;
}

// ── scenarios ─────────────────────────────────────────────────────────────

const scenarios = {};

// v1: the handshake, server identity, tool list with valid schemas.
scenarios['v1-handshake'] = async () => {
  const c = await connectV1(uid('v1h'));
  assert.equal(c.version, '2025-11-25');
  const init = c.received.find((m) => m.id === 0);
  assert.equal(init.result.protocolVersion, '2025-11-25');
  assert.equal(c.client.getServerVersion().name, 'arc');
  assert.ok(c.client.getServerCapabilities().tools);
  assert.match(c.client.getInstructions(), /arc_poll_messages/);
  assert.deepEqual(await c.client.ping(), {});
  await listAndCheckTools(c);
};

// v1: every tool against a live hub; a peer agent plays the other side
// over HTTP.
scenarios['v1-tools'] = async () => {
  const A = uid('v1a'), P = uid('peer');
  await hub('POST', '/v1/sessions', { agent_id: P });
  const c = await connectV1(A);
  await listAndCheckTools(c);       // caches the output schemas: results are validated

  let s = ok(await call(c, 'arc_whoami'));
  assert.equal(s.agent_id, A);
  assert.equal(typeof s.session_id, 'string');
  assert.equal(s.hub, HUB);
  assert.equal(s.bootstrap.session.session_id, s.session_id);

  s = ok(await call(c, 'arc_list_agents'));
  const live = s.agents.map((a) => a.agent_id);
  assert.ok(live.includes(A) && live.includes(P), live);

  const ch = uid('ch'), th = uid('th');
  let r = await call(c, 'arc_create_channel', { name: ch });
  assert.equal(ok(r).name, ch);
  assert.match(text(r), new RegExp(ch));

  r = await call(c, 'arc_post_message', { channel: ch, body: 'from A', thread_id: th });
  const mine = ok(r);
  assert.deepEqual([mine.from_agent, mine.channel, mine.body, mine.thread_id],
    [A, ch, 'from A', th]);
  assert.match(text(r), /from A/);

  const theirs = await post(P, { channel: ch, body: 'from P', thread_id: th });
  r = await call(c, 'arc_poll_messages', { channel: ch, timeout: 10 });
  s = ok(r);
  assert.deepEqual(s.messages.map((m) => m.id), [theirs.id]);   // not its own
  assert.match(text(r), /from P/);
  s = ok(await call(c, 'arc_poll_messages', { channel: ch, timeout: 0 }));
  assert.deepEqual(s.messages, []);

  r = await call(c, 'arc_dm', { to_agent: P, body: 'dm to P' });
  s = ok(r);
  assert.deepEqual([s.to_agent, s.channel, s.kind], [P, 'direct', 'chat']);
  const inboxP = await hub('GET', `/v1/inbox/${encodeURIComponent(P)}?since_id=0`);
  assert.ok(inboxP.some((m) => m.id === s.id));

  const dm = await post(P, { to_agent: A, body: 'dm to A' });
  r = await call(c, 'arc_inbox');
  s = ok(r);
  assert.ok(s.messages.some((m) => m.id === dm.id), JSON.stringify(s));
  assert.match(text(r), /dm to A/);
  s = ok(await call(c, 'arc_inbox', { since_id: dm.id }));
  assert.deepEqual(s.messages, []);

  r = await call(c, 'arc_read_thread', { thread_id: th });
  s = ok(r);
  assert.equal(s.thread.thread_id, th);
  assert.deepEqual(s.messages.map((m) => m.body), ['from A', 'from P']);
  r = await call(c, 'arc_read_thread', { thread_id: uid('none') });
  assert.equal(r.isError, true);
  assert.match(text(r), /thread not found/);

  const key = uid('claim');
  s = ok(await call(c, 'arc_claim', { claim_key: key, thread_id: th }));
  assert.equal(s.acquired, true);
  assert.equal(s.claim.owner_agent_id, A);
  const denied = await hub('POST', '/v1/claims', { owner_agent_id: P, claim_key: key });
  assert.equal(denied.owner_agent_id, A);
  s = ok(await call(c, 'arc_claim', { claim_key: key, action: 'refresh', ttl_sec: 60 }));
  assert.equal(s.acquired, true);
  s = ok(await call(c, 'arc_claim', { claim_key: key, action: 'release' }));
  assert.ok(s.claim.released_at);
  const key2 = uid('claim');
  await hub('POST', '/v1/claims', { owner_agent_id: P, claim_key: key2 });
  r = await call(c, 'arc_claim', { claim_key: key2 });
  s = ok(r);
  assert.equal(s.acquired, false);
  assert.equal(s.claim.owner_agent_id, P);

  const file = `src/${uid('f')}.c`;
  s = ok(await call(c, 'arc_lock', { file_path: file }));
  assert.equal(s.acquired, true);
  assert.equal(s.lock.agent_id, A);
  const locks = await hub('GET', `/v1/locks?agent_id=${encodeURIComponent(A)}&active_only=1`);
  assert.ok(locks.some((l) => l.file_path === file));
  s = ok(await call(c, 'arc_lock', { file_path: file, action: 'release' }));
  assert.ok(s.lock.released_at);
  r = await call(c, 'arc_lock', { file_path: file, action: 'release' });
  assert.equal(r.isError, true);
  assert.match(text(r), /lock not found/);
  await hub('POST', '/v1/locks', { agent_id: P, file_path: file });
  r = await call(c, 'arc_lock', { file_path: file });
  s = ok(r);
  assert.equal(s.acquired, false);
  assert.equal(s.lock.agent_id, P);

  const task = await post(P, { channel: ch, kind: 'task', body: 'a task', thread_id: th });
  s = ok(await call(c, 'arc_tasks', { channel: ch }));
  assert.deepEqual(s.tasks.map((t) => t.task_id), [task.id]);
  s = ok(await call(c, 'arc_tasks', { complete_task_id: task.id }));
  assert.equal(s.tasks[0].status, 'done');
  s = ok(await call(c, 'arc_tasks', { channel: ch, status: 'done' }));
  assert.deepEqual(s.tasks.map((t) => t.task_id), [task.id]);

  const req = await post(P, { to_agent: A, kind: 'task_request', body: 'what is 6*7?' });
  r = await call(c, 'arc_task_result', { task_id: req.id, body: '42' });
  s = ok(r);
  assert.deepEqual([s.kind, s.reply_to, s.to_agent, s.body], ['task_result', req.id, P, '42']);
  const done = await hub('GET', '/v1/tasks?status=done');
  assert.ok(done.some((t) => t.task_id === req.id));

  // receipts (PROTOCOL 17): A answered P's request; P asks A for an ack
  s = ok(await call(c, 'arc_receipts', { message_id: req.id }));
  assert.deepEqual(s.receipts.map((x) => [x.agent_id, x.state]), [[A, 'answered']]);
  const ask = await post(P, { to_agent: A, body: 'ack me', metadata: { ack_required: true } });
  s = ok(await call(c, 'arc_unanswered'));
  assert.deepEqual(s.unanswered.map((u) => u.message_id), [ask.id]);
  s = ok(await call(c, 'arc_ack', { message_id: ask.id }));
  assert.equal(s.receipt.state, 'acked');
  assert.deepEqual(ok(await call(c, 'arc_unanswered', { side: 'asked' })).unanswered, []);

  // arc_rpc_call: P answers the request as soon as it sees it; the result is
  // that task_result message, as the reference's
  let asked;
  const answerer = waitFor(P, (m) => m.kind === 'task_request' && m.from_agent === A)
    .then((m) => {
      asked = m;
      return post(P, { to_agent: A, kind: 'task_result', reply_to: m.id, body: 'pong' });
    });
  r = await call(c, 'arc_rpc_call', { to_agent: P, body: 'ping?', timeout: 20 });
  s = ok(r);
  await answerer;
  assert.equal(asked.body, 'ping?');
  assert.deepEqual([s.kind, s.from_agent, s.body, s.reply_to],
    ['task_result', P, 'pong', asked.id]);

  r = await call(c, 'arc_post_message', { channel: uid('nochannel'), body: 'x' });
  assert.equal(r.isError, true);
  assert.match(text(r), /channel does not exist/);
};

// v1: two MCP servers, two agents: DMs both ways, then A's arc_rpc_call is
// answered by B through arc_poll_messages and arc_task_result.
scenarios['v1-two-agents'] = async () => {
  const a = await connectV1(uid('A')), b = await connectV1(uid('B'));
  for (const c of [a, b]) ok(await call(c, 'arc_whoami'));
  await Promise.all([a, b].map((c) => c.client.listTools()));

  ok(await call(a, 'arc_dm', { to_agent: b.agent, body: 'hello B' }));
  let s = ok(await call(b, 'arc_poll_messages', { timeout: 10 }));
  assert.deepEqual(s.messages.map((m) => [m.from_agent, m.body]), [[a.agent, 'hello B']]);
  ok(await call(b, 'arc_dm', { to_agent: a.agent, body: 'hello A' }));
  s = ok(await call(a, 'arc_poll_messages', { timeout: 10 }));
  assert.deepEqual(s.messages.map((m) => [m.from_agent, m.body]), [[b.agent, 'hello A']]);
  const agents = ok(await call(a, 'arc_list_agents')).agents.map((x) => x.agent_id);
  assert.ok(agents.includes(a.agent) && agents.includes(b.agent));

  const rpc = call(a, 'arc_rpc_call', { to_agent: b.agent, body: 'sum 2 3', timeout: 30 });
  s = ok(await call(b, 'arc_poll_messages', { timeout: 20 }));
  assert.equal(s.messages.length, 1, JSON.stringify(s));
  const req = s.messages[0];
  assert.deepEqual([req.kind, req.from_agent, req.to_agent, req.body],
    ['task_request', a.agent, b.agent, 'sum 2 3']);
  s = ok(await call(b, 'arc_task_result', { task_id: req.id, body: '5' }));
  assert.equal(s.to_agent, a.agent);
  s = ok(await rpc);
  assert.deepEqual([s.from_agent, s.kind, s.body, s.reply_to],
    [b.agent, 'task_result', '5', req.id]);
  const tasks = await hub('GET', '/v1/tasks?status=done');
  assert.ok(tasks.some((t) => t.task_id === req.id));
};

// v2 with version negotiation 'auto': the stateless 2026-07-28 revision.
scenarios['v2-modern'] = async () => {
  const c = await connectV2(uid('v2'));
  assert.equal(c.client.getNegotiatedProtocolVersion(), '2026-07-28');
  assert.equal(c.client.getProtocolEra(), 'modern');
  assert.equal(c.client.getServerVersion()?.name, 'arc');
  assert.match(c.client.getInstructions() ?? '', /arc_poll_messages/);
  assert.ok(!c.sent.some((m) => m.method === 'initialize'), 'sent initialize');
  await listAndCheckTools(c);
  const lst = c.received.find((m) => m.result?.tools);
  assert.equal(lst.result.resultType, 'complete');

  let s = ok(await callV2(c, 'arc_whoami'));
  assert.equal(s.agent_id, c.agent);
  const ch = uid('ch');
  ok(await callV2(c, 'arc_create_channel', { name: ch }));
  const m = ok(await callV2(c, 'arc_post_message', { channel: ch, body: 'modern' }));
  assert.equal(m.body, 'modern');
  const theirs = await post(uid('peer'), { channel: ch, body: 'to modern' });
  s = ok(await callV2(c, 'arc_poll_messages', { channel: ch, timeout: 10 }));
  assert.deepEqual(s.messages.map((x) => x.id), [theirs.id]);
  const r = await callV2(c, 'arc_post_message', { channel: uid('nochannel'), body: 'x' });
  assert.equal(r.isError, true);
  assert.match(text(r), /channel does not exist/);
  for (const msg of c.received) {
    if ('result' in msg) assert.equal(msg.result.resultType, 'complete', JSON.stringify(msg));
  }
  for (const msg of c.sent) {
    if ('id' in msg) {
      assert.equal(msg.params?._meta?.['io.modelcontextprotocol/protocolVersion'],
        '2026-07-28', JSON.stringify(msg));
    }
  }
};

// Progress notifications for a waiting poll (v1 or v2), whose total is the
// wait in seconds; a message posted after the first one ends the wait.
async function progressScenario(c, callFn, timeout, total) {
  await c.client.listTools();
  ok(await callFn(c, 'arc_whoami'));
  const notes = [];
  let posted;
  const body = uid('after-progress');
  const t0 = Date.now();
  const r = await callFn(c, 'arc_poll_messages', { timeout }, {
    onprogress: (p) => {
      notes.push(p);
      if (!posted) posted = post(uid('peer'), { channel: 'general', body });
    },
    resetTimeoutOnProgress: true,
  });
  await posted;
  const s = ok(r);
  assert.ok(notes.length >= 1, 'no progress notification');
  for (const p of notes) {
    assert.equal(typeof p.progress, 'number');
    assert.equal(p.total, total);
    assert.ok(p.progress > 0 && p.progress < total, JSON.stringify(p));
    assert.equal(typeof p.message, 'string');
  }
  assert.deepEqual(s.messages.map((m) => m.body), [body]);
  assert.ok(Date.now() - t0 < 30_000, 'the poll was not woken by the message');
  const reqId = c.sent.find((m) => m.params?.name === 'arc_poll_messages').id;
  const tokens = c.received.filter((m) => m.method === 'notifications/progress')
    .map((m) => m.params.progressToken);
  assert.ok(tokens.length && tokens.every((t) => t === reqId), JSON.stringify(tokens));
  log(`progress notes: ${notes.length}, first: ${JSON.stringify(notes[0])}`);
}

scenarios['v1-progress'] = async () =>
  progressScenario(await connectV1(uid('v1p')), call, 40, 40);
scenarios['v2-progress'] = async () =>   // a longer timeout is cut to the 50 s maximum
  progressScenario(await connectV2(uid('v2p')), callV2, 999, 50);

// Cancelling a waiting poll with an AbortSignal (v1 or v2): the call
// rejects, the server sends nothing for it, and other calls work.
async function cancelScenario(c, callFn, ping) {
  await c.client.listTools();
  ok(await callFn(c, 'arc_whoami'));
  const ac = new AbortController();
  const waiting = callFn(c, 'arc_poll_messages', { timeout: 40 }, { signal: ac.signal });
  await ping(c);                    // the poll request is on the wire before this
  const reqId = c.sent.find((m) => m.params?.name === 'arc_poll_messages').id;
  ac.abort('test cancels');
  await assert.rejects(waiting);
  const cancel = c.sent.find((m) => m.method === 'notifications/cancelled');
  // Over HTTP the v2 client in the stateless era closes the request instead.
  if (!OVER_HTTP || c.version !== '2026-07-28') assert.equal(cancel?.params.requestId, reqId);
  await ping(c);
  ok(await callFn(c, 'arc_whoami'));
  const body = uid('after-cancel');
  await post(uid('peer'), { channel: 'general', body });
  const s = ok(await callFn(c, 'arc_poll_messages', { timeout: 10 }));
  assert.deepEqual(s.messages.map((m) => m.body), [body]);
  await sleep(1000);                // nothing for the cancelled id, even later
  assert.ok(!c.received.some((m) => m.id === reqId && !('method' in m)),
    'an answer came for the cancelled request');
}

scenarios['v1-cancel'] = async () =>
  cancelScenario(await connectV1(uid('v1c')), call, (c) => c.client.ping());
scenarios['v2-cancel'] = async () =>   // no ping in the stateless era (and tools/list is cached)
  cancelScenario(await connectV2(uid('v2c')), callV2, (c) => callV2(c, 'arc_whoami'));

// ── main ──────────────────────────────────────────────────────────────────

const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`usage: node mcp_sdk.mjs SCENARIO\nscenarios: ${Object.keys(scenarios).join(' ')}`);
  process.exit(2);
}
if (!HUB) {
  console.error('ARC_HUB_URL is not set');
  process.exit(2);
}
const watchdog = setTimeout(() => {
  console.error(`FAIL ${name}: timed out`);
  process.exit(1);
}, 120_000);
let failed = false;
try {
  await scenarios[name]();
  for (const c of clients) {
    assert.deepEqual(c.errors.map((e) => String(e?.message ?? e)), [],
      `client of ${c.agent} reported errors`);
  }
} catch (e) {
  failed = true;
  console.error(`FAIL ${name}:`, e?.stack ?? e);
  for (const c of clients) {
    if (c.errors.length) console.error(`onerror of ${c.agent}:`, c.errors.map(String));
  }
}
for (const c of clients) await c.client.close().catch(() => {});
clearTimeout(watchdog);
if (!failed) log(`PASS ${name}`);
process.exit(failed ? 1 : 0);
