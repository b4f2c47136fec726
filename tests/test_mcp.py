"""The MCP stdio server, `arc mcp --agent NAME`, over raw pipes (arc-only).

Each test starts `arc mcp` as a child process with pipes for stdin and
stdout, and speaks JSON-RPC to it byte for byte. The areas covered:
- framing: newline-delimited input, and Content-Length input from older
  clients;
- batches;
- malformed and invalid messages;
- notifications;
- concurrency: a ping while a poll waits, and cancellation;
- the lifecycle: EOF, the hub going down and coming back, the heartbeat,
  and autostart;
- the relay transport;
- both protocol eras: the handshake era (2024-11-05 to 2025-11-25) and the
  stateless era (2026-07-28).
The official SDK clients are driven by test_mcp_sdk.py.

The server's stderr goes to a file. Under `make asan` that file is checked
for sanitizer reports, like a hub's log.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_mcp -v
"""

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hubtest  # noqa: E402
from hubtest import (KEEP, Hub, HubCase, arc_only, free_port, hub_command, request,  # noqa: E402
                     uid, wait_for)

ANSWER = 15.0          # the longest any answer may take (generous for make asan)
STATELESS = "2026-07-28"
LEGACY = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
META = {  # the per-request envelope of the stateless era
    "io.modelcontextprotocol/protocolVersion": STATELESS,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
}
TOOLS = {
    "arc_post_message", "arc_poll_messages", "arc_dm", "arc_list_agents",
    "arc_create_channel", "arc_rpc_call", "arc_inbox", "arc_read_thread", "arc_claim",
    "arc_lock", "arc_tasks", "arc_task_result", "arc_whoami", "arc_kv",
    "arc_search", "arc_ack", "arc_receipts", "arc_unanswered",
}
READ_ONLY = {"arc_poll_messages", "arc_list_agents", "arc_inbox", "arc_read_thread",
             "arc_whoami", "arc_search", "arc_receipts", "arc_unanswered"}
# Tools whose result is a list, as the reference's are: the text is the list,
# and structuredContent (which must be an object) holds it under this key.
LIST_RESULTS = {"arc_poll_messages": "messages", "arc_list_agents": "agents"}


def mcp_env():
    """The test's environment without the variables that pick a hub or agent."""
    return {k: v for k, v in os.environ.items()
            if k not in ("ARC_URL", "ARC_AGENT", "ARC_RELAY_DIR")}


class McpProc:
    """One `arc mcp` child. A thread reads stdout: every raw line is kept
    (for checking that stdout is clean), and each line that parses as JSON
    is queued for the test."""

    def __init__(self, args, cwd=None, stderr_pipe=False):
        self.dir = tempfile.mkdtemp(prefix="arc-mcp-")
        self.err_path = os.path.join(self.dir, "mcp.err")
        self.argv = hub_command() + ["mcp"] + [str(a) for a in args]
        self._errf = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr_pipe else self._errf,
            cwd=cwd or self.dir, env=mcp_env())
        self.raw_lines = []
        self.pending = []           # messages read but not yet taken by the test
        self.q = queue.Queue()
        self.stdout_eof = threading.Event()
        self.stderr_eof = threading.Event()
        self._next_id = 1
        self._lock = threading.Lock()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if stderr_pipe:
            threading.Thread(target=self._read_stderr, daemon=True).start()
        else:
            self.stderr_eof.set()

    def _read_stdout(self):
        for line in iter(self.proc.stdout.readline, b""):
            with self._lock:
                self.raw_lines.append(line)
            try:
                msg = json.loads(line)
            except ValueError:
                continue    # kept in raw_lines; assert_clean_stdout reports it
            self.q.put(msg)
        self.stdout_eof.set()

    def _read_stderr(self):
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
            self._errf.write(chunk)
            self._errf.flush()
        self.stderr_eof.set()

    # sending
    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def new_id(self):
        self._next_id += 1
        return self._next_id

    def send_request(self, method, params=None, id=None):
        """Send a request without waiting; returns its id."""
        id = self.new_id() if id is None else id
        msg = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return id

    def notify(self, method, params=None):
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    # receiving
    def next_message(self, timeout=ANSWER):
        """The next message not yet taken, in arrival order."""
        if self.pending:
            return self.pending.pop(0)
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no message from arc mcp within %.1fs; stderr:\n%s"
                                 % (timeout, self.stderr_text()[-3000:])) from None

    def answer(self, id, timeout=ANSWER):
        """The answer (result or error) to request `id`; other messages that
        arrive first are kept for later."""
        for i, m in enumerate(self.pending):
            if isinstance(m, dict) and m.get("id") == id and "method" not in m:
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                m = self.q.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError("no answer to id %r within %.1fs; stderr:\n%s"
                                     % (id, timeout, self.stderr_text()[-3000:])) from None
            if isinstance(m, dict) and m.get("id") == id and "method" not in m:
                return m
            self.pending.append(m)

    def request(self, method, params=None, id=None, timeout=ANSWER):
        return self.answer(self.send_request(method, params, id), timeout)

    def result(self, method, params=None, timeout=ANSWER):
        a = self.request(method, params, timeout=timeout)
        if "result" not in a:
            raise AssertionError("%s failed: %r" % (method, a))
        return a["result"]

    def initialize(self, version="2025-11-25"):
        r = self.result("initialize", {"protocolVersion": version, "capabilities": {},
                                       "clientInfo": {"name": "raw-test", "version": "1"}})
        self.notify("notifications/initialized")
        return r

    def call(self, name, arguments=None, meta=None, timeout=ANSWER):
        """tools/call; returns the result (a tool result, isError or not).
        A successful one is checked with tool_json()."""
        params = {"name": name, "arguments": arguments or {}}
        if meta:
            params["_meta"] = meta
        r = self.result("tools/call", params, timeout=timeout)
        if not r.get("isError"):
            tool_json(r, name)
        return r

    def assert_silent(self, seconds):
        """Nothing arrives within `seconds` (a short window: used only to
        show that something does NOT happen)."""
        if self.pending:
            raise AssertionError("unexpected message: %r" % (self.pending[0],))
        try:
            m = self.q.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError("unexpected message: %r" % (m,))

    def lines(self):
        with self._lock:
            return list(self.raw_lines)

    def stderr_text(self):
        try:
            with open(self.err_path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    # lifecycle
    def close_stdin(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def cleanup(self):
        if self.proc.poll() is None:
            self.close_stdin()
            if self.wait(5) is None:
                self.proc.kill()
                self.proc.wait()
        self.stdout_eof.wait(5)
        self.stderr_eof.wait(5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._errf.close()
        hubtest.check_sanitizer_log(self.stderr_text())
        if not KEEP:
            shutil.rmtree(self.dir, ignore_errors=True)


def tool_text(result):
    """The text of a tool result's first content block."""
    content = result.get("content")
    assert isinstance(content, list) and content, result
    assert content[0].get("type") == "text", result
    return content[0]["text"]


def tool_json(result, name):
    """A successful result's JSON (docs/MCP.md, "Tools"): content[0].text is
    the compact JSON of the result, and structuredContent, where the version
    has it, says the same: the object itself, or {key: list} for the tools
    in LIST_RESULTS."""
    text = tool_text(result)
    value = json.loads(text)
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False), text
    assert isinstance(value, list) == (name in LIST_RESULTS), (name, text)
    if "structuredContent" in result:
        want = {LIST_RESULTS[name]: value} if name in LIST_RESULTS else value
        assert result["structuredContent"] == want, result
    return value


def check_schema(value, schema, where="$"):
    """`value` conforms to `schema`, for the keywords arc's outputSchemas
    use (type, properties, required, items, enum)."""
    types = {"object": dict, "array": list, "string": str, "boolean": bool,
             "null": type(None), "number": (int, float), "integer": int}
    want = schema.get("type")
    if want is not None:
        kinds = want if isinstance(want, list) else [want]
        ok = any(isinstance(value, types[k]) and not (k in ("integer", "number") and
                                                       isinstance(value, bool))
                 for k in kinds)
        assert ok, "%s: %r is not %s" % (where, value, want)
    if "enum" in schema:
        assert value in schema["enum"], "%s: %r not in %s" % (where, value, schema["enum"])
    if isinstance(value, dict):
        for k in schema.get("required", []):
            assert k in value, "%s: %s missing" % (where, k)
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                check_schema(value[k], sub, "%s.%s" % (where, k))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check_schema(item, schema["items"], "%s[%d]" % (where, i))


def agents_live(hub):
    status, _, payload = hub.get("/v1/agents")
    assert status == 200, payload
    return {s["agent_id"]: s for s in payload["result"]}


def port_closed(port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        return False
    except OSError:
        return True
    finally:
        s.close()


class McpCase(HubCase):
    """One hub per class; `arc mcp` children per test."""

    def spawn(self, agent=None, *extra, hub=None, cwd=None, stderr_pipe=False):
        agent = agent or uid("mcp")
        hub = hub or self.hub
        p = McpProc(["--agent", agent, "--base-url", hub.url, "--no-autostart"] + list(extra),
                    cwd=cwd, stderr_pipe=stderr_pipe)
        p.agent = agent
        self.addCleanup(p.cleanup)
        return p

    def ready(self, p, version="2025-11-25"):
        """Initialize, then one tool call: a finished call means the
        server's registration (and cursor bootstrap) is done."""
        p.initialize(version)
        r = p.call("arc_whoami")
        self.assertNotIn("isError", r, r)
        return r

    def post(self, frm, body, channel="general", **fields):
        msg = {"from_agent": frm, "channel": channel, "body": body}
        msg.update(fields)
        return self.assertOk(self.hub.post("/v1/messages", msg), 201)

    def assert_clean_stdout(self, p):
        """Every stdout line is one JSON-RPC 2.0 message (or batch answer),
        newline-terminated, with nothing else at all."""
        lines = p.lines()
        self.assertTrue(lines, "no output at all")
        for line in lines:
            self.assertTrue(line.endswith(b"\n"), "unterminated line %r" % line[:200])
            self.assertNotIn(b"\r", line, "carriage return in %r" % line[:200])
            try:
                msg = json.loads(line)
            except ValueError:
                self.fail("stdout line is not JSON: %r" % line[:200])
            items = msg if isinstance(msg, list) else [msg]
            self.assertTrue(items, "empty batch answer on stdout")
            for m in items:
                self.assertIsInstance(m, dict, line[:200])
                self.assertEqual(m.get("jsonrpc"), "2.0", line[:200])
                if "method" in m:       # a notification from the server
                    self.assertNotIn("id", m, line[:200])
                else:                   # an answer
                    self.assertEqual(("result" in m) + ("error" in m), 1, line[:200])
                    self.assertIsNot(m.get("id", 0), None, "null id: %r" % line[:200])

    def assert_error(self, answer, code, id=None):
        self.assertIn("error", answer, answer)
        self.assertNotIn("result", answer, answer)
        self.assertEqual(answer["error"]["code"], code, answer)
        self.assertIsInstance(answer["error"].get("message"), str, answer)
        if id is None:
            self.assertNotIn("id", answer, answer)
        else:
            self.assertEqual(answer["id"], id, answer)


# ── framing, JSON-RPC validity, notifications ────────────────────────────

@arc_only
class McpWireTest(McpCase):

    def test_newline_delimited_handshake(self):
        """initialize echoes each supported version (else gives the newest
        handshake one), with tools, serverInfo and instructions; notifications
        get no reply; ping answers exactly {}."""
        for want, got in [(v, v) for v in LEGACY] + [("1999-01-01", "2025-11-25"),
                                                      (STATELESS, "2025-11-25")]:
            with self.subTest(version=want):
                p = self.spawn()
                r = p.initialize(want)
                self.assertEqual(r["protocolVersion"], got, r)
                self.assertIsInstance(r["capabilities"].get("tools"), dict, r)
                self.assertEqual(r["serverInfo"]["name"], "arc", r)
                self.assertIsInstance(r["serverInfo"]["version"], str, r)
                self.assertTrue(r["instructions"].strip(), r)
                self.assertNotIn("resultType", r)
                # the notifications/initialized sent by initialize() got no
                # reply: the next line is the ping's answer
                pid = p.send_request("ping")
                a = p.next_message()
                self.assertEqual(a, {"jsonrpc": "2.0", "id": pid, "result": {}})
                self.assert_clean_stdout(p)

    def test_content_length_framed_input(self):
        """Content-Length framing (\\r\\n\\r\\n and \\n\\n header ends, any
        header case, a pretty-printed multi-line body, two frames in one
        write) is read; every answer is one newline-terminated line."""
        p = self.spawn()

        def frame(obj, sep=b"\r\n\r\n", header=b"Content-Length", indent=None):
            body = json.dumps(obj, indent=indent).encode()
            return header + b": " + str(len(body)).encode() + sep + body

        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2024-11-05", "capabilities": {},
                           "clientInfo": {"name": "old", "version": "1"}}}
        p.send_raw(frame(init))
        r = p.answer(1)
        self.assertEqual(r["result"]["protocolVersion"], "2024-11-05", r)
        p.send_raw(frame({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        p.send_raw(frame({"jsonrpc": "2.0", "id": 2, "method": "ping"}, sep=b"\n\n"))
        self.assertEqual(p.next_message(), {"jsonrpc": "2.0", "id": 2, "result": {}})
        p.send_raw(frame({"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                         header=b"content-length", indent=2))
        self.assertEqual(len(p.answer(3)["result"]["tools"]), len(TOOLS))
        # two frames in one write, then a newline-delimited message
        p.send_raw(frame({"jsonrpc": "2.0", "id": 4, "method": "ping"}) +
                   frame({"jsonrpc": "2.0", "id": 5, "method": "ping"}, sep=b"\n\n"))
        p.send({"jsonrpc": "2.0", "id": 6, "method": "ping"})
        for i in (4, 5, 6):
            self.assertEqual(p.answer(i), {"jsonrpc": "2.0", "id": i, "result": {}})
        for line in p.lines():
            self.assertFalse(line.lower().startswith(b"content-length"), line)
        self.assert_clean_stdout(p)

    def test_batches(self):
        """Batches only after initialize with 2025-03-26: one array with the
        requests' answers only; otherwise a single -32600."""
        p = self.spawn()
        pings = [{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in (1, 2)]
        p.send(pings)                       # before initialize
        self.assert_error(p.next_message(), -32600)
        p.initialize("2025-06-18")
        p.send(pings)                       # a version without batches
        self.assert_error(p.next_message(), -32600)

        p = self.spawn()
        p.initialize("2025-03-26")
        p.call("arc_whoami")
        p.send([
            {"jsonrpc": "2.0", "id": 10, "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": "ten-1", "method": "tools/list"},
            {"jsonrpc": "2.0", "method": "notifications/progress",
             "params": {"progressToken": 1, "progress": 1}},
            {"jsonrpc": "2.0", "id": 12, "method": "tools/call",
             "params": {"name": "arc_whoami", "arguments": {}}},
            {"jsonrpc": "2.0", "id": 13, "method": "no/such/method"},
        ])
        batch = p.next_message()
        self.assertIsInstance(batch, list, batch)
        self.assertEqual(sorted(str(a["id"]) for a in batch), ["10", "12", "13", "ten-1"])
        by_id = {a["id"]: a for a in batch}
        self.assertEqual(by_id[10]["result"], {})
        self.assertEqual(len(by_id["ten-1"]["result"]["tools"]), len(TOOLS))
        self.assertEqual(tool_json(by_id[12]["result"], "arc_whoami")["agent_id"], p.agent)
        self.assert_error(by_id[13], -32601, 13)
        # only notifications: no answer at all; then [] and [1]
        p.send([{"jsonrpc": "2.0", "method": "notifications/initialized"}])
        p.send([])
        self.assert_error(p.next_message(), -32600)
        p.send([1])
        a = p.next_message()
        self.assertIsInstance(a, list, a)
        self.assertEqual(len(a), 1, a)
        self.assert_error(a[0], -32600)
        self.assert_clean_stdout(p)

    def test_malformed_lines(self):
        """Lines that are not JSON get -32700 (no id) and the process goes
        on; blank lines are skipped."""
        p = self.spawn()
        for bad in (b"{not json\n", b'{"jsonrpc":"2.0","id":1,"method":"ping"\n',
                    b"\xff\xfe\n", b"nul\x00l\n", b"\n", b"   \t  \r\n"):
            p.send_raw(bad)
        for _ in range(4):
            self.assert_error(p.next_message(), -32700)
        pid = p.send_request("ping")
        self.assertEqual(p.next_message(), {"jsonrpc": "2.0", "id": pid, "result": {}})
        self.assertIsNone(p.proc.poll())
        self.assert_clean_stdout(p)

    def test_invalid_requests(self):
        """-32600 for what is not a JSON-RPC 2.0 request, -32602 for bad
        params, an unknown tool or non-object arguments."""
        p = self.spawn()
        p.initialize()
        cases = [
            ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, -32600, 1),
            ({"id": 2, "method": "ping"}, -32600, 2),
            ({"jsonrpc": "2.0", "id": 3, "method": 5}, -32600, 3),
            ({"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}, -32600, None),
            ({"jsonrpc": "2.0", "id": None, "method": "ping"}, -32600, None),
            ("a string", -32600, None),
            (7, -32600, None),
            ({"jsonrpc": "2.0", "id": 6, "method": "tools/list", "params": [1]}, -32602, 6),
            ({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {}}, -32602, 7),
            ({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
              "params": {"name": "no_such_tool", "arguments": {}}}, -32602, 8),
            ({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
              "params": {"name": "arc_whoami", "arguments": [1]}}, -32602, 9),
            ({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
              "params": {"name": 42}}, -32602, 10),
        ]
        for msg, code, id in cases:
            with self.subTest(msg=msg):
                p.send(msg)
                self.assert_error(p.next_message(), code, id)
        self.assertEqual(p.request("ping")["result"], {})
        self.assert_clean_stdout(p)

    def test_responses_from_client_not_answered(self):
        """A response-shaped message (result or error with an id) is not a
        request: answering it with an error would hand the client an answer
        for one of its own request ids."""
        p = self.spawn()
        p.initialize()
        p.send({"jsonrpc": "2.0", "id": 41, "result": {}})
        p.send({"jsonrpc": "2.0", "id": 42, "error": {"code": -32601, "message": "no"}})
        pid = p.send_request("ping")
        self.assertEqual(p.next_message(), {"jsonrpc": "2.0", "id": pid, "result": {}})

    def test_notifications_get_no_reply(self):
        """Known, unknown and malformed notifications are never answered:
        the next line is the answer to the ping sent after them."""
        p = self.spawn()
        p.initialize()
        p.notify("notifications/initialized")
        p.notify("notifications/progress", {"progressToken": 1, "progress": 1})
        p.notify("notifications/roots/list_changed")
        p.notify("notifications/cancelled", {"requestId": 999, "reason": "nothing"})
        p.notify("notifications/cancelled")
        p.notify("no/such/notification", {"x": 1})
        p.notify("ping")
        p.send({"jsonrpc": "2.0", "method": "tools/list", "params": [1]})
        pid = p.send_request("ping")
        self.assertEqual(p.next_message(), {"jsonrpc": "2.0", "id": pid, "result": {}})
        self.assert_clean_stdout(p)

    def test_unknown_methods_before_initialize(self):
        """Unknown methods get -32601 before initialize (clients probe), the
        process keeps running, and initialize then works."""
        p = self.spawn()
        for method in ("resources/list", "prompts/list", "sampling/whatever"):
            a = p.request(method)
            self.assert_error(a, -32601, a.get("id"))
        self.assertEqual(p.request("ping")["result"], {})
        self.assertEqual(p.initialize()["protocolVersion"], "2025-11-25")
        self.assert_error(p.request("resources/templates/list"), -32601, p._next_id)
        self.assertEqual(len(p.result("tools/list")["tools"]), len(TOOLS))
        self.assert_clean_stdout(p)

    def test_oversized_line(self):
        """A line over 4 MiB gets -32700 and is skipped whole; so is a
        Content-Length over 4 MiB; the process goes on."""
        p = self.spawn()
        p.initialize()
        big = (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' +
               b"a" * (4 * 1024 * 1024 + 1000) + b'"}}\n')
        p.send_raw(big)
        self.assert_error(p.next_message(), -32700)
        pid = p.send_request("ping")
        self.assertEqual(p.next_message(), {"jsonrpc": "2.0", "id": pid, "result": {}})
        p.send_raw(b"Content-Length: 5000000\r\n\r\n")
        self.assert_error(p.next_message(), -32700)
        pid = p.send_request("ping")
        self.assertEqual(p.next_message(), {"jsonrpc": "2.0", "id": pid, "result": {}})
        self.assertIsNone(p.proc.poll())
        self.assert_clean_stdout(p)


# ── tools and protocol eras ───────────────────────────────────────────────

@arc_only
class McpToolTest(McpCase):

    def test_search(self):
        """arc_search: the agent's view (its DMs, not others'), each hit's
        message and snippet, filters, bad limit."""
        p = self.spawn()
        self.ready(p)
        w = uid("mcps").replace("-", "")
        pub = self.post("x", "public %s words" % w, kind="notice")
        dm = self.post("x", "for you %s" % w, channel="direct", to_agent=p.agent)
        self.post("x", "not for you %s" % w, channel="direct", to_agent="someone-else")
        r = p.call("arc_search", {"query": w})
        self.assertNotIn("isError", r, r)
        got = [h["message"]["id"] for h in r["structuredContent"]["results"]]
        self.assertCountEqual(got, [pub["id"], dm["id"]])
        for hit in r["structuredContent"]["results"]:
            self.assertIn("\u00ab%s\u00bb" % w, hit["snippet"])
        r = p.call("arc_search", {"query": w, "kind": "notice", "from_agent": "x", "limit": 5})
        self.assertEqual([h["message"]["id"] for h in r["structuredContent"]["results"]],
                         [pub["id"]])
        r = p.call("arc_search", {"query": w, "limit": 0})
        self.assertIs(r.get("isError"), True, r)
        r = p.call("arc_search", {})
        self.assertIs(r.get("isError"), True, r)

    def test_results_are_json(self):
        """Every tool's result is JSON (McpProc.call checks the text against
        structuredContent) conforming to the tool's outputSchema, and the
        reference's six tools answer in the reference's shapes: the stored
        message (arc_post_message, arc_dm), the bare list (arc_poll_messages,
        arc_list_agents), the channel row, and arc_rpc_call's task_result.
        Before 2025-06-18 the text alone carries the same JSON."""
        p = self.spawn()
        self.ready(p)
        schemas = {t["name"]: t["outputSchema"] for t in p.result("tools/list")["tools"]}
        peer, th, key = uid("peer"), uid("th"), uid("mem")
        self.assertOk(self.hub.post("/v1/sessions", {"agent_id": peer}), 201)
        seen = set()

        def call(name, args=None):
            r = p.call(name, args)
            self.assertNotIn("isError", r, r)
            check_schema(r["structuredContent"], schemas[name], name)
            seen.add(name)
            return tool_json(r, name)

        ch = call("arc_create_channel", {"name": uid("ch")})
        self.assertEqual(ch["created_by"], p.agent)
        status, _, env = self.hub.get("/v1/channels")
        self.assertIn(ch, env["result"])
        m = call("arc_post_message", {"channel": ch["name"], "body": "b", "thread_id": th})
        env = self.hub.get("/v1/messages", channel=ch["name"], since_id=m["id"] - 1)[2]
        self.assertEqual(env["result"], [m])     # the hub's row as it is
        dm = call("arc_dm", {"to_agent": peer, "body": "psst"})
        self.assertEqual((dm["channel"], dm["to_agent"], dm["kind"]), ("direct", peer, "chat"))
        theirs = self.post(peer, "news", channel=ch["name"], thread_id=th)
        self.assertEqual(call("arc_poll_messages", {"timeout": 5}), [theirs])
        self.assertIn(peer, [a["agent_id"] for a in call("arc_list_agents")])

        def answer():    # the peer answers the first task_request sent to it
            def req():
                env = self.hub.get("/v1/inbox/" + peer, since_id=0)[2]
                return [x for x in env["result"] if x["kind"] == "task_request"]
            wait_for(req, 10)
            self.post(peer, "pong", channel="direct", to_agent=p.agent,
                      kind="task_result", reply_to=req()[0]["id"])
        t = threading.Thread(target=answer)
        t.start()
        res = call("arc_rpc_call", {"to_agent": peer, "body": "ping?", "timeout": 20})
        t.join()
        self.assertEqual((res["kind"], res["from_agent"], res["body"]),
                         ("task_result", peer, "pong"), res)

        call("arc_inbox")
        self.assertEqual([x["id"] for x in call("arc_read_thread", {"thread_id": th})["messages"]],
                         [m["id"], theirs["id"]])
        call("arc_claim", {"claim_key": uid("c")})
        call("arc_lock", {"file_path": uid("f")})
        req = self.post(peer, "job", kind="task_request", channel="direct", to_agent=p.agent)
        task = self.post(peer, "work", kind="task", channel=ch["name"])
        self.assertIn(task["id"], [x["task_id"] for x in call("arc_tasks")["tasks"]])
        r = call("arc_task_result", {"task_id": req["id"], "body": "done"})
        self.assertEqual((r["kind"], r["reply_to"], r["to_agent"]), ("task_result", req["id"], peer))
        call("arc_tasks", {"complete_task_id": task["id"]})
        call("arc_whoami")
        call("arc_kv", {"action": "put", "key": key, "value": [1, "x"]})
        call("arc_kv", {"action": "put", "key": key, "value": 2, "version": 0})   # conflict
        call("arc_kv", {"action": "history", "key": key})
        call("arc_search", {"query": "news"})
        ask = self.post(peer, "ack?", channel="direct", to_agent=p.agent,
                        metadata={"ack_required": True})
        self.assertIn(ask["id"], [u["message_id"] for u in call("arc_unanswered")["unanswered"]])
        self.assertEqual(call("arc_ack", {"message_id": ask["id"]})["receipt"]["state"], "acked")
        self.assertEqual([r["state"] for r in
                          call("arc_receipts", {"message_id": ask["id"]})["receipts"]], ["acked"])
        self.assertEqual(seen, TOOLS)

        # 2024-11-05: no structuredContent, the same JSON in the text
        q = self.spawn(p.agent + "-old")
        self.ready(q, "2024-11-05")
        r = q.call("arc_post_message", {"channel": ch["name"], "body": "old"})
        self.assertNotIn("structuredContent", r)
        self.assertEqual(tool_json(r, "arc_post_message")["body"], "old")
        self.post(peer, "later", channel=ch["name"])
        r = q.call("arc_poll_messages", {"timeout": 5})
        self.assertEqual([x["body"] for x in tool_json(r, "arc_poll_messages")], ["later"])
        r = q.call("arc_list_agents")
        self.assertIn(peer, [a["agent_id"] for a in tool_json(r, "arc_list_agents")])

    def test_read_thread_limit(self):
        """arc_read_thread's limit keeps the last messages of the thread, the
        rest of the answer (thread, tasks, claims, locks) whole."""
        p = self.spawn()
        self.ready(p)
        th = uid("th")
        ids = [self.post("x", "m%d" % i, thread_id=th)["id"] for i in range(5)]
        full = self.hub.get("/v1/threads/" + th)[2]["result"]
        r = tool_json(p.call("arc_read_thread", {"thread_id": th, "limit": 2}),
                      "arc_read_thread")
        self.assertEqual([m["id"] for m in r["messages"]], ids[-2:])
        self.assertEqual({k: v for k, v in r.items() if k != "messages"},
                         {k: v for k, v in full.items() if k != "messages"})
        r = tool_json(p.call("arc_read_thread", {"thread_id": th}), "arc_read_thread")
        self.assertEqual(r, full)

    def test_search_window_note(self):
        """A full window (PROTOCOL §15.1) is said in the result: oldest_id,
        the oldest message ranked."""
        import sqlite3
        p = self.spawn()
        self.ready(p)
        w = uid("mcpw").replace("-", "")
        first = self.post("x", "first %s" % w)
        self.assertNotIn("oldest_id", p.call("arc_search", {"query": w})["structuredContent"])
        db = sqlite3.connect(self.hub.storage, timeout=10)
        with db:
            db.executemany("INSERT INTO messages(ts,from_agent,channel,kind,body) "
                           "VALUES('2026-01-01T00:00:00Z','x','general','chat',?)",
                           (("%s %d" % (w, i),) for i in range(2000)))
        db.close()
        # More than one indexing chunk (ARC_SEARCH_CHUNK): wait for the backlog.
        wait_for(lambda: "pending" not in self.hub.get("/v1/search", q=w)[2], 30,
                 msg="the search backlog was never indexed")
        r = p.call("arc_search", {"query": w})
        self.assertNotIn("isError", r, r)
        self.assertEqual(r["structuredContent"]["oldest_id"], first["id"] + 1, r)
        self.assertNotIn("pending", r["structuredContent"])

    def check_tool_schemas(self, tools):
        self.assertEqual({t["name"] for t in tools}, TOOLS)
        for t in tools:
            self.assertTrue(t["description"].strip(), t)
            s = t["inputSchema"]
            self.assertEqual(s["type"], "object", t)
            self.assertIsInstance(s.get("properties"), dict, t)
            for req in s.get("required", []):
                self.assertIn(req, s["properties"], t)

    def test_tools_list_shape_per_version(self):
        """2024-11-05: no annotations, title or outputSchema, and no
        structuredContent; 2025-03-26 adds annotations; 2025-06-18 and
        later add title, outputSchema and structuredContent."""
        for v in LEGACY:
            with self.subTest(version=v):
                p = self.spawn()
                p.initialize(v)
                res = p.result("tools/list")
                self.assertNotIn("resultType", res)
                self.assertNotIn("ttlMs", res)
                tools = res["tools"]
                self.check_tool_schemas(tools)
                for t in tools:
                    if v >= "2025-03-26":
                        a = t["annotations"]
                        # spec defaults: readOnlyHint and idempotentHint false
                        self.assertIs(a.get("readOnlyHint", False), t["name"] in READ_ONLY, t)
                        self.assertIs(a["destructiveHint"], False, t)
                        self.assertIs(a["openWorldHint"], False, t)
                        # the title is the tool's own from 2025-06-18 on
                        self.assertEqual("title" in a, v == "2025-03-26", t)
                    else:
                        self.assertNotIn("annotations", t)
                    if v >= "2025-06-18":
                        self.assertTrue(t["title"].strip(), t)
                        self.assertEqual(t["outputSchema"]["type"], "object", t)
                    else:
                        self.assertNotIn("title", t)
                        self.assertNotIn("outputSchema", t)
                r = p.call("arc_whoami")
                self.assertNotIn("isError", r)
                self.assertNotIn("resultType", r)
                self.assertEqual(tool_json(r, "arc_whoami")["agent_id"], p.agent)
                if v >= "2025-06-18":
                    self.assertEqual(r["structuredContent"]["agent_id"], p.agent, r)
                else:
                    self.assertNotIn("structuredContent", r)
                self.assert_clean_stdout(p)

    def test_denied_claim_and_lock_reported(self):
        """A claim or lock held by another agent is reported as not acquired
        (the hub's envelope says acquired:false), naming the holder."""
        p = self.spawn()
        self.ready(p)
        other = uid("holder")
        key, path = uid("key"), "src/%s.c" % uid("f")
        self.assertOk(self.hub.post("/v1/claims", {"owner_agent_id": other,
                                                   "claim_key": key}), 201)
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": other, "file_path": path}), 201)
        for tool, args, row, owner in (
                ("arc_claim", {"claim_key": key}, "claim", "owner_agent_id"),
                ("arc_lock", {"file_path": path}, "lock", "agent_id")):
            with self.subTest(tool=tool):
                r = p.call(tool, args)
                self.assertNotIn("isError", r, r)
                self.assertIs(r["structuredContent"]["acquired"], False, r)
                self.assertEqual(r["structuredContent"][row][owner], other, r)

    def test_kv_tool(self):
        """arc_kv: put, get, list, history, delete; a lost compare-and-set
        is reported (conflict, current row), not an error; a missing key
        reads as null."""
        p = self.spawn()
        self.ready(p)
        key = uid("mem") + "/db"

        def kv(**args):
            r = p.call("arc_kv", args)
            self.assertNotIn("isError", r, r)
            return r

        r = kv(action="put", key=key, value={"engine": "pg"}, type="decision", version=0)
        e = r["structuredContent"]["entry"]
        self.assertEqual((e["version"], e["updated_by"], e["type"]), (1, p.agent, "decision"))
        r = kv(action="get", key=key)
        self.assertEqual(r["structuredContent"]["entry"]["value"], {"engine": "pg"})
        self.assertIn('{"engine":"pg"}', tool_text(r))
        self.assertOk(self.hub.request("PUT", "/v1/kv/" + key.replace("/", "%2F"),
                                       body={"agent_id": "other", "value": "sqlite"}))
        r = kv(action="put", key=key, value="mine", version=1)
        self.assertIs(r["structuredContent"]["conflict"], True, r)
        self.assertEqual(r["structuredContent"]["entry"]["value"], "sqlite")
        r = kv(action="list", prefix=key.split("/")[0] + "/")
        self.assertEqual([x["key"] for x in r["structuredContent"]["entries"]], [key])
        r = kv(action="history", key=key)
        self.assertEqual([(h["version"], h["agent_id"]) for h in r["structuredContent"]["entries"]],
                         [(1, p.agent), (2, "other")])
        r = kv(action="delete", key=key, version=2)
        self.assertEqual(r["structuredContent"]["entry"]["op"], "delete")
        r = kv(action="get", key=key)
        self.assertIsNone(r["structuredContent"]["entry"])
        # the other agent's write reached this one's poll as a notice
        r = p.call("arc_poll_messages", {"channel": "memory", "timeout": 0})
        kvs = [m["metadata"]["kv"] for m in r["structuredContent"]["messages"]]
        self.assertEqual([k["version"] for k in kvs if k["key"] == key], [2])
        for bad in ({"action": "nope", "key": key}, {"action": "get"},
                    {"action": "put", "key": key}, {"action": "put", "key": key, "value": 1,
                                                     "type": "opinion"}):
            self.assertIs(p.call("arc_kv", bad).get("isError"), True, bad)

    def test_poll_filters_past_the_cursor_limit(self):
        """Each channel/thread filter keeps its own read position, at most
        MCP_MAX_CURSORS (256) of them: past that the least recently used is
        dropped, and its filter starts over like a new one, from the
        unfiltered position (docs/MCP.md): it repeats, never skips."""
        p = self.spawn()
        self.ready(p)
        ch = self.channel()

        def poll(**filt):
            r = p.call("arc_poll_messages", dict(filt, timeout=0))
            self.assertNotIn("isError", r, r)
            return [m["id"] for m in r["structuredContent"]["messages"]]

        m1 = self.post("elsewhere", "first", channel=ch, thread_id="t-first")["id"]
        self.assertEqual(poll(channel=ch, thread_id="t-first"), [m1])
        self.assertEqual(poll(channel=ch, thread_id="t-first"), [])   # read up to m1
        for i in range(300):       # more filters than the table holds
            self.assertEqual(poll(channel=ch, thread_id="t-%d" % i), [])
        m2 = self.post("elsewhere", "second", channel=ch, thread_id="t-first")["id"]
        # Dropped, so from the unfiltered position (registration): m1 again.
        self.assertEqual(poll(channel=ch, thread_id="t-first"), [m1, m2])
        self.assertEqual(poll(channel=ch, thread_id="t-first"), [])
        # The newest filters kept theirs.
        m3 = self.post("elsewhere", "third", channel=ch, thread_id="t-299")["id"]
        self.assertEqual(poll(channel=ch, thread_id="t-299"), [m3])

    def test_message_text_and_arguments(self):
        """Unicode and multi-line bodies survive both ways (in the text, JSON
        escaped where JSON must be); numbers given as strings are taken;
        a missing required argument or a hub refusal is an isError result
        carrying the reason."""
        p = self.spawn()
        self.ready(p)
        body = "l\u00ednea 1 \u2713\nline 2 \U0001f600 \"quoted\""
        r = p.call("arc_post_message", {"channel": "general", "body": body,
                                        "thread_id": 12345})
        m = r["structuredContent"]
        self.assertEqual((m["body"], m["thread_id"]), (body, "12345"), r)
        self.assertIn('1 \u2713\\nline 2 \U0001f600 \\"quoted\\"', tool_text(r))
        self.post(uid("poster"), body)
        r = p.call("arc_poll_messages", {"timeout": "5"})
        self.assertEqual([x["body"] for x in r["structuredContent"]["messages"]], [body])
        r = p.call("arc_dm", {"body": "to nobody"})
        self.assertIs(r.get("isError"), True, r)
        self.assertIn("to_agent", tool_text(r))
        r = p.call("arc_post_message", {"channel": "general"})
        self.assertIs(r.get("isError"), True, r)
        self.assertIn("body or attachments is required", tool_text(r))
        r = p.call("arc_inbox", {"limit": "x"})
        self.assertIs(r.get("isError"), True, r)
        self.assertIn("limit", tool_text(r))

    def test_task_result_defaults(self):
        """arc_task_result without to_agent/channel: a direct task_request is
        answered to the asker in direct; a broadcast one in the request's
        channel (as the tool's schema says). Both tasks become done."""
        p = self.spawn()
        self.ready(p)
        asker, ch = uid("asker"), self.channel()
        dm = self.post(asker, "direct job", channel="direct", to_agent=p.agent,
                       kind="task_request")
        bc = self.post(asker, "broadcast job", channel=ch, kind="task_request")
        for req, channel, to in ((dm, "direct", asker), (bc, ch, None)):
            with self.subTest(channel=req["channel"]):
                r = p.call("arc_task_result", {"task_id": req["id"], "body": "done"})
                self.assertNotIn("isError", r, r)
                m = r["structuredContent"]
                self.assertEqual((m["kind"], m["reply_to"], m["channel"], m["to_agent"]),
                                 ("task_result", req["id"], channel, to), m)
                status, _, env = self.hub.get("/v1/tasks", status="done")
                self.assertIn(req["id"], [t["task_id"] for t in env["result"]])

    def test_stateless_era(self):
        """2026-07-28 with no handshake: server/discover, resultType on every
        result, cache hints on lists, -32022 for an unknown _meta version,
        -32602 for a version without clientCapabilities; a request without
        _meta on the same process is still served in the legacy era."""
        p = self.spawn()
        d = p.result("server/discover", {"_meta": META})
        self.assertEqual(d["resultType"], "complete", d)
        for v in (STATELESS,) + LEGACY:
            self.assertIn(v, d["supportedVersions"], d)
        self.assertIsInstance(d["capabilities"].get("tools"), dict, d)
        self.assertIsInstance(d["ttlMs"], int, d)
        self.assertGreaterEqual(d["ttlMs"], 0, d)
        self.assertIn(d["cacheScope"], ("public", "private"), d)
        self.assertEqual(d["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "arc", d)
        self.assertTrue(d["instructions"].strip(), d)

        lst = p.result("tools/list", {"_meta": META})
        self.assertEqual(lst["resultType"], "complete", lst)
        self.assertIsInstance(lst["ttlMs"], int, lst)
        self.assertIn(lst["cacheScope"], ("public", "private"), lst)
        self.check_tool_schemas(lst["tools"])
        for t in lst["tools"]:
            self.assertIn("outputSchema", t)
            self.assertIn("annotations", t)

        r = p.call("arc_whoami", meta=META)
        self.assertEqual(r["resultType"], "complete", r)
        self.assertNotIn("isError", r, r)
        self.assertEqual(tool_json(r, "arc_whoami")["agent_id"], p.agent, r)
        r = p.call("arc_post_message", {"channel": "no-such-" + uid(), "body": "x"}, meta=META)
        self.assertEqual(r["resultType"], "complete", r)
        self.assertIs(r["isError"], True, r)

        bad = dict(META)
        bad["io.modelcontextprotocol/protocolVersion"] = "1900-01-01"
        a = p.request("tools/list", {"_meta": bad})
        self.assert_error(a, -32022, a.get("id"))
        self.assertNotIn("resultType", a)
        self.assertEqual(a["error"]["data"]["requested"], "1900-01-01", a)
        self.assertIn(STATELESS, a["error"]["data"]["supported"], a)
        a = p.request("tools/list", {"_meta": {
            "io.modelcontextprotocol/protocolVersion": STATELESS}})
        self.assert_error(a, -32602, a.get("id"))

        legacy = p.result("tools/list")
        self.assertNotIn("resultType", legacy)
        self.assertEqual({t["name"] for t in legacy["tools"]}, TOOLS)
        self.assert_clean_stdout(p)

    def test_stateless_after_initialize(self):
        """A client that initialized (the bridge then sends that version to
        the hub) and then speaks 2026-07-28 is served in the _meta's
        version, not refused for a contradicting header; the stateless
        revision's removed methods get -32601 (the hub's HTTP 404 for it
        is not taken for a lost session: the agent is not registered
        again)."""
        p = self.spawn()
        p.initialize("2025-06-18")
        self.assertEqual(p.call("arc_whoami")["structuredContent"]["agent_id"], p.agent)
        before = agents_live(self.hub)[p.agent]["session_id"]
        d = p.result("server/discover", {"_meta": META})
        self.assertEqual(d["resultType"], "complete", d)
        r = p.call("arc_whoami", meta=META)
        self.assertEqual(r["resultType"], "complete", r)
        for method in ("ping", "initialize", "no/such"):
            a = p.request(method, {"_meta": META})
            self.assert_error(a, -32601, a.get("id"))
        self.assertEqual(p.request("ping")["result"], {})
        self.assertEqual(agents_live(self.hub)[p.agent]["session_id"], before)
        self.assert_clean_stdout(p)


# ── concurrency: ping while waiting, cancellation ─────────────────────────

@arc_only
class McpConcurrencyTest(McpCase):

    def test_ping_while_poll_waits(self):
        """While arc_poll_messages waits, ping, tools/list and another tool
        call are answered; a message posted over HTTP then wakes the poll at
        once."""
        p = self.spawn()
        self.ready(p)
        poll = p.send_request("tools/call", {"name": "arc_poll_messages",
                                             "arguments": {"timeout": 30}})
        ping = p.send_request("ping")
        self.assertEqual(p.next_message(), {"jsonrpc": "2.0", "id": ping, "result": {}})
        self.assertEqual(len(p.result("tools/list")["tools"]), len(TOOLS))
        self.assertEqual(p.call("arc_whoami")["structuredContent"]["agent_id"], p.agent)
        body = "wake up " + uid()
        posted = self.post(uid("poster"), body)
        t0 = time.monotonic()
        a = p.answer(poll, timeout=10)    # the poll would otherwise last 30 s
        took = time.monotonic() - t0
        r = a["result"]
        self.assertNotIn("isError", r, r)
        self.assertEqual([m["id"] for m in tool_json(r, "arc_poll_messages")], [posted["id"]])
        self.assertLess(took, 10)
        self.assert_clean_stdout(p)

    def test_cancel_waiting_call(self):
        """notifications/cancelled ends a waiting call: no answer for its id
        ever comes (and nothing else is written for it), and later calls
        work."""
        p = self.spawn()
        self.ready(p)
        waits = [p.send_request("tools/call", {"name": "arc_poll_messages",
                                               "arguments": {"timeout": 30}}, id=id)
                 for id in (501, "w-502")]
        self.assertEqual(p.request("ping")["result"], {})     # both are in flight
        for id in waits:
            p.notify("notifications/cancelled", {"requestId": id, "reason": "test"})
        p.assert_silent(1.5)
        body = "after cancel " + uid()
        self.post(uid("poster"), body)
        r = p.call("arc_poll_messages", {"timeout": 10})
        self.assertEqual([m["body"] for m in tool_json(r, "arc_poll_messages")], [body])
        p.close_stdin()
        self.assertEqual(p.wait(10), 0)
        self.assertTrue(p.stdout_eof.wait(5))
        ids = [json.loads(line).get("id") for line in p.lines() if line.strip()]
        for id in waits:
            self.assertNotIn(id, ids)
        self.assert_clean_stdout(p)


    def test_cancel_at_once_keeps_session(self):
        """A call cancelled at once (while it is still connecting to the hub)
        is not taken for an unreachable hub: the session stays the same and
        no re-registration happens."""
        p = self.spawn()
        session = self.ready(p)["structuredContent"]["session_id"]
        for _ in range(5):
            wid = p.send_request("tools/call", {"name": "arc_poll_messages",
                                                "arguments": {"timeout": 30}})
            p.notify("notifications/cancelled", {"requestId": wid})
            r = p.call("arc_whoami")
            self.assertEqual(r["structuredContent"]["session_id"], session, r)
        self.assertEqual(agents_live(self.hub)[p.agent]["session_id"], session)


# ── lifecycle ─────────────────────────────────────────────────────────────

@arc_only
class McpLifecycleTest(McpCase):

    def test_eof_ends_process_and_session(self):
        """EOF on stdin ends the process with status 0 at once and closes the
        agent's session."""
        p = self.spawn()
        self.ready(p)
        self.assertIn(p.agent, agents_live(self.hub))
        t0 = time.monotonic()
        p.close_stdin()
        self.assertEqual(p.wait(10), 0, p.stderr_text())
        print("\n    exit after EOF took %.0f ms" % ((time.monotonic() - t0) * 1000))
        self.assertTrue(p.stdout_eof.wait(5))
        self.assertNotIn(p.agent, agents_live(self.hub))
        self.assert_clean_stdout(p)

    def test_eof_with_calls_in_flight(self):
        """EOF while tool calls are starting or waiting: the process still
        exits with 0 at once, writes nothing for the abandoned calls, and
        closes the session (an abandoned call is not a hub failure)."""
        for round in range(3):
            with self.subTest(round=round):
                p = self.spawn()
                self.ready(p)
                p.send_request("tools/call", {"name": "arc_poll_messages",
                                              "arguments": {"timeout": 40}})
                self.assertEqual(p.request("ping")["result"], {})
                p.send_request("tools/call", {"name": "arc_poll_messages",
                                              "arguments": {"timeout": 40}})
                p.close_stdin()
                self.assertEqual(p.wait(10), 0, p.stderr_text())
                self.assertTrue(p.stdout_eof.wait(5))
                self.assertNotIn(p.agent, agents_live(self.hub))
                self.assert_clean_stdout(p)

    def test_signals_end_process_and_session(self):
        """MCP clients stop a stdio server with a signal, not EOF (Claude Code
        SIGINT, Codex and Gemini CLI SIGTERM; a closed terminal SIGHUP): each
        takes EOF's orderly path, with stdin still open and a poll waiting:
        status 0 at once, and the session is closed, not left live until
        the presence TTL."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with self.subTest(signal=sig.name):
                p = self.spawn()
                self.ready(p)
                self.assertIn(p.agent, agents_live(self.hub))
                p.send_request("tools/call", {"name": "arc_poll_messages",
                                              "arguments": {"timeout": 40}})
                self.assertEqual(p.request("ping")["result"], {})
                t0 = time.monotonic()
                p.proc.send_signal(sig)
                self.assertEqual(p.wait(10), 0, p.stderr_text())
                self.assertLess(time.monotonic() - t0, 5, p.stderr_text())
                self.assertTrue(p.stdout_eof.wait(5))
                self.assertNotIn(p.agent, agents_live(self.hub))
                self.assert_clean_stdout(p)

    def test_stdout_carries_only_jsonrpc(self):
        """A busy session (every kind of answer, a tool error, a parse error,
        a cancelled call, a batch) leaves nothing on stdout but JSON-RPC
        lines; the logs are on stderr."""
        p = self.spawn()
        p.initialize("2025-03-26")
        p.call("arc_whoami")
        p.call("arc_post_message", {"channel": "no-such-" + uid(), "body": "x"})
        p.call("arc_list_agents")
        p.send_raw(b"garbage\n")
        p.request("no/such")
        p.send([{"jsonrpc": "2.0", "id": 90, "method": "ping"},
                {"jsonrpc": "2.0", "id": 91, "method": "tools/list"}])
        wid = p.send_request("tools/call", {"name": "arc_poll_messages",
                                            "arguments": {"timeout": 30}})
        p.request("ping")
        p.notify("notifications/cancelled", {"requestId": wid})
        p.request("ping")
        p.result("server/discover", {"_meta": META})
        p.close_stdin()
        self.assertEqual(p.wait(10), 0)
        self.assertTrue(p.stdout_eof.wait(5))
        self.assert_clean_stdout(p)
        self.assertIn("arc mcp", p.stderr_text())

    def test_registration_options(self):
        """--display-name and --capabilities reach the session; a second
        server for the same agent replaces the first one's session."""
        agent = uid("opts")
        p = self.spawn(agent, "--display-name", "Nice Name", "--capabilities", "review, c,,tests")
        self.ready(p)
        s = agents_live(self.hub)[agent]
        self.assertEqual(s["display_name"], "Nice Name")
        self.assertEqual(s["capabilities"], ["review", "c", "tests"])
        r = p.call("arc_list_agents")
        self.assertIn("Nice Name", [a["display_name"] for a in tool_json(r, "arc_list_agents")])
        q = self.spawn(agent)
        who = self.ready(q)
        wait_for(lambda: agents_live(self.hub)[agent]["session_id"]
                 == who["structuredContent"]["session_id"], timeout=10)
        self.assertEqual(agents_live(self.hub)[agent]["display_name"], agent)

    def test_relay_transport(self):
        """--relay-dir: the server talks to the hub through its file spool;
        posting, polling, cancelling a waiting poll and closing the session
        at EOF work."""
        spool = os.path.join(self.hub.dir, "spool")
        agent = uid("relay")
        p = McpProc(["--agent", agent, "--relay-dir", spool, "--no-autostart"])
        self.addCleanup(p.cleanup)
        p.initialize()
        who = p.call("arc_whoami")
        self.assertNotIn("isError", who, who)
        self.assertEqual(who["structuredContent"]["hub"], spool, who)
        self.assertIn(agent, agents_live(self.hub))
        body = "via the spool " + uid()
        r = p.call("arc_post_message", {"channel": "general", "body": body})
        self.assertNotIn("isError", r, r)
        status, _, env = self.hub.get("/v1/messages", channel="general", since_id=0,
                                      limit=500)
        self.assertEqual(status, 200)
        mine = [m for m in env["result"] if m["body"] == body]
        self.assertEqual(len(mine), 1, env)
        self.assertEqual(mine[0]["from_agent"], agent)
        reply = "to the relay agent " + uid()
        self.post(uid("poster"), reply, channel="direct", to_agent=agent)
        r = p.call("arc_poll_messages", {"timeout": 10})
        self.assertEqual([m["body"] for m in r["structuredContent"]["messages"]], [reply])
        wid = p.send_request("tools/call", {"name": "arc_poll_messages",
                                            "arguments": {"timeout": 30}})
        self.assertEqual(p.request("ping")["result"], {})
        p.notify("notifications/cancelled", {"requestId": wid})
        self.assertNotIn("isError", p.call("arc_whoami"))
        p.close_stdin()
        self.assertEqual(p.wait(10), 0)
        self.assertNotIn(agent, agents_live(self.hub))
        self.assertTrue(p.stdout_eof.wait(5))
        ids = [json.loads(line).get("id") for line in p.lines() if line.strip()]
        self.assertNotIn(wid, ids)
        self.assert_clean_stdout(p)


@arc_only
class McpHeartbeatTest(McpCase):
    hub_args = ("--presence-ttl", "5")

    def test_heartbeat_keeps_agent_present(self):
        """With a 5 s presence TTL and no tool calls for 8 s, the agent stays
        live and its claim is not recovered."""
        p = self.spawn()
        self.ready(p)
        key = uid("claim")
        r = p.call("arc_claim", {"claim_key": key, "ttl_sec": 300})
        self.assertIs(r["structuredContent"]["acquired"], True, r)
        end = time.monotonic() + 8
        while time.monotonic() < end:   # asserting that expiry does NOT happen
            self.assertIn(p.agent, agents_live(self.hub))   # (this also prunes)
            time.sleep(0.5)
        status, _, env = self.hub.get("/v1/claims", active_only="true")
        self.assertEqual(status, 200)
        self.assertIn(key, [c["claim_key"] for c in env["result"]])
        status, _, env = self.hub.get("/v1/messages", channel="general", since_id=0,
                                      limit=500)
        recoveries = [m for m in env["result"]
                      if (m.get("metadata") or {}).get("claim_key") == key]
        self.assertEqual(recoveries, [])


@arc_only
class McpHubDownTest(McpCase):
    # a short TTL makes the heartbeat (a third of it) retry quickly
    hub_args = ("--presence-ttl", "6")

    @classmethod
    def setUpClass(cls):
        unittest.TestCase.setUpClass()
        cls.hub = Hub().start(cls.hub_args)

    def test_hub_down_and_back(self):
        """Hub gone: tool calls give an isError result saying the hub is not
        reachable, ping is still answered. Hub back on the same port and
        storage: the server re-registers by itself and calls work again."""
        p = self.spawn()
        who = self.ready(p)
        old_session = who["structuredContent"]["session_id"]
        self.hub.stop_process()
        r = p.call("arc_list_agents")
        self.assertIs(r.get("isError"), True, r)
        self.assertIn("not reachable", tool_text(r))
        r = p.call("arc_post_message", {"channel": "general", "body": "lost"})
        self.assertIs(r.get("isError"), True, r)
        self.assertEqual(p.request("ping")["result"], {})
        self.assertEqual(len(p.result("tools/list")["tools"]), len(TOOLS))
        self.assertIsNone(p.proc.poll())

        self.hub.start(self.hub.extra_args, storage=self.hub.storage, port=self.hub.port)
        # no tool call: the server must notice and register on its own
        wait_for(lambda: (agents_live(self.hub).get(p.agent) or {}).get("session_id")
                 not in (None, old_session), timeout=20,
                 msg="arc mcp did not re-register after the hub came back")
        r = p.call("arc_whoami")
        self.assertNotIn("isError", r, r)
        self.assertNotEqual(r["structuredContent"]["session_id"], old_session)
        body = "back " + uid()
        r = p.call("arc_post_message", {"channel": "general", "body": body})
        self.assertNotIn("isError", r, r)
        self.assertEqual(r["structuredContent"]["body"], body)
        self.assert_clean_stdout(p)


@arc_only
class McpAutostartTest(McpCase):
    """No class hub is needed; these start (or refuse to start) their own."""

    @classmethod
    def setUpClass(cls):
        unittest.TestCase.setUpClass()

    @classmethod
    def tearDownClass(cls):
        unittest.TestCase.tearDownClass()

    def setUp(self):
        self.cwd = tempfile.mkdtemp(prefix="arc-mcp-cwd-")
        if not KEEP:
            self.addCleanup(shutil.rmtree, self.cwd, True)
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port

    def stop_hub(self):
        storage = os.path.join(self.cwd, "arc.sqlite3")
        subprocess.run(hub_command() + ["stop", "--port", str(self.port), "--storage", storage],
                       cwd=self.cwd, env=mcp_env(), capture_output=True, timeout=30)
        pidfile = os.path.join(self.cwd, ".arc.pid")
        if os.path.exists(pidfile):    # stop failed: kill what the pidfile names
            try:
                with open(pidfile) as f:
                    os.kill(json.load(f)["pid"], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass
        for name in os.listdir(self.cwd):
            if name.endswith(".log"):
                with open(os.path.join(self.cwd, name), "rb") as f:
                    hubtest.check_sanitizer_log(f.read().decode("utf-8", errors="replace"))

    def test_autostart(self):
        """A local URL where no hub answers: `arc mcp` starts one (as `arc
        ensure` would, storage in its working directory) and works; the hub
        it started does not hold the server's stdout or stderr open."""
        agent = uid("auto")
        p = McpProc(["--agent", agent, "--base-url", self.url], cwd=self.cwd,
                    stderr_pipe=True)
        self.addCleanup(p.cleanup)
        self.addCleanup(self.stop_hub)
        p.initialize()
        r = p.call("arc_whoami")
        self.assertNotIn("isError", r, r)
        status, _, env = request(self.port, "GET", "/v1/agents")
        self.assertEqual(status, 200)
        self.assertIn(agent, [s["agent_id"] for s in env["result"]])
        self.assertTrue(os.path.exists(os.path.join(self.cwd, ".arc.pid")))
        self.assertTrue(os.path.exists(os.path.join(self.cwd, "arc.sqlite3")))
        p.close_stdin()
        self.assertEqual(p.wait(10), 0)
        self.assertTrue(p.stdout_eof.wait(5), "stdout still open after exit (hub holds it?)")
        self.assertTrue(p.stderr_eof.wait(5), "stderr still open after exit (hub holds it?)")
        self.assertEqual(request(self.port, "GET", "/v1/hub-info")[0], 200)
        self.assert_clean_stdout(p)

    def test_no_autostart(self):
        """--no-autostart: no hub is started; tool calls say the hub is not
        reachable."""
        p = McpProc(["--agent", uid("noauto"), "--base-url", self.url, "--no-autostart"],
                    cwd=self.cwd)
        self.addCleanup(p.cleanup)
        self.addCleanup(self.stop_hub)
        p.initialize()
        r = p.call("arc_whoami")
        self.assertIs(r.get("isError"), True, r)
        self.assertIn("not reachable", tool_text(r))
        self.assertTrue(port_closed(self.port))
        self.assertFalse(os.path.exists(os.path.join(self.cwd, ".arc.pid")))
        self.assertFalse(os.path.exists(os.path.join(self.cwd, "arc.sqlite3")))
        self.assert_clean_stdout(p)


if __name__ == "__main__":
    unittest.main()


@arc_only
class McpTokenTest(McpCase):
    """A hub that requires a bearer token (PROTOCOL §2.4): `arc mcp` passes
    --token-file / --token, and without one every tool says the hub refused."""

    TOKEN = "mcp-" + "7c1e" * 8

    @classmethod
    def setUpClass(cls):
        unittest.TestCase.setUpClass()
        cls.hub = Hub(token=cls.TOKEN).start(cls.hub_args)

    def test_token_file_and_flag(self):
        path = os.path.join(self.hub.dir, "mcp-token")
        with open(path, "w") as f:
            f.write(self.TOKEN + "\n")
        os.chmod(path, 0o600)
        for extra in (["--token-file", path], ["--token", self.TOKEN]):
            p = self.spawn(None, *extra)
            self.ready(p)
            r = p.call("arc_post_message", {"channel": "general", "body": "with a token"})
            self.assertNotIn("isError", r, r)
            self.assertEqual(r["structuredContent"]["from_agent"], p.agent)
            self.assert_clean_stdout(p)

    def test_without_token_refused(self):
        p = self.spawn()
        p.initialize()
        r = p.call("arc_whoami")
        self.assertTrue(r.get("isError"), r)
        self.assertIn("401", tool_text(r))
        self.assertEqual(p.request("ping")["result"], {})
        self.assert_clean_stdout(p)


# ── Claude Code channels: arc mcp --channel ──────────────────────────────

CHANNEL_NOTE = "notifications/claude/channel"
META_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")   # Claude Code drops others


@arc_only
class McpChannelTest(McpCase):
    """`arc mcp --channel` (docs/MCP.md, "Claude Code channels"): the
    experimental claude/channel capability, server/discover refused (so
    Claude Code connects with initialize), and messages owed to the agent
    pushed as notifications/claude/channel, each exactly once, marked
    surfaced via=channel (PROTOCOL §16)."""

    def notes(self, p, want, timeout=ANSWER):
        """The next `want` channel notifications (deadline-based); other
        messages are kept for later."""
        got, deadline = [], time.monotonic() + timeout
        kept = [m for m in p.pending if m.get("method") != CHANNEL_NOTE]
        got = [m for m in p.pending if m.get("method") == CHANNEL_NOTE]
        p.pending = kept
        while len(got) < want:
            left = deadline - time.monotonic()
            try:
                m = p.q.get(timeout=max(left, 0.001))
            except queue.Empty:
                self.fail("%d of %d channel notifications within %.1fs; stderr:\n%s"
                          % (len(got), want, timeout, p.stderr_text()[-3000:]))
            if isinstance(m, dict) and m.get("method") == CHANNEL_NOTE:
                got.append(m)
            else:
                p.pending.append(m)
        return got

    def check_note(self, note):
        self.assertNotIn("id", note)
        params = note["params"]
        self.assertIsInstance(params["content"], str, note)
        for k, v in params["meta"].items():
            self.assertRegex(k, META_KEY, note)
            self.assertIsInstance(v, str, note)   # else Claude Code drops the event
        return params

    def owed(self, agent):
        return self.assertOk(self.hub.get("/v1/delivery/%s" % agent))["owed"]

    def receipt(self, msg_id, agent):
        r = self.assertOk(self.hub.get("/v1/messages/%d/receipts" % msg_id))
        return [x for x in r["receipts"] if x["agent_id"] == agent][0]

    def test_handshake(self):
        """initialize declares experimental claude/channel and says so in the
        instructions; server/discover is Method not found (Claude Code then
        falls back to initialize); without --channel neither."""
        p = self.spawn(None, "--channel")
        a = p.request("server/discover", {"_meta": META})
        self.assert_error(a, -32601, a.get("id"))
        r = p.initialize()
        self.assertEqual(r["capabilities"]["experimental"], {"claude/channel": {}}, r)
        self.assertIn("tools", r["capabilities"])
        self.assertIn('<channel source="arc">', r["instructions"])
        self.assert_clean_stdout(p)
        q = self.spawn()
        d = q.result("server/discover", {"_meta": META})
        self.assertIn(STATELESS, d["supportedVersions"])
        self.assertNotIn("experimental", d["capabilities"])
        r = q.initialize()
        self.assertNotIn("experimental", r["capabilities"])
        self.assertNotIn("<channel", r["instructions"])

    def test_push_exactly_once(self):
        """Nothing is pushed before the client has listed the tools; then a
        DM posted earlier and one posted later arrive once each, with string
        meta; channel chatter is not pushed, a mention is; each is marked
        surfaced via=channel, so a hook's take finds nothing."""
        p = self.spawn(None, "--channel")
        p.initialize()
        early = self.post("bob", "before tools/list", channel="direct", to_agent=p.agent)
        p.assert_silent(1.5)   # not listening yet: Claude Code would drop it
        self.assertEqual(self.owed(p.agent), 1)
        p.result("tools/list")
        first = self.check_note(self.notes(p, 1)[0])
        self.assertEqual(first["content"], "before tools/list")
        self.assertEqual(first["meta"]["message_id"], str(early["id"]))
        self.assertEqual(first["meta"]["from_agent"], "bob")
        self.assertEqual(first["meta"]["reason"], "dm")
        self.assertNotIn("channel", first["meta"])   # a DM's channel says nothing
        dm = self.post("bob", "while idle", channel="direct", to_agent=p.agent)
        self.post("bob", "chatter for nobody")
        men = self.post("carol", "look @%s" % p.agent, thread_id="t-chan")
        got = [self.check_note(n) for n in self.notes(p, 2)]
        self.assertEqual([(g["meta"]["message_id"], g["meta"]["reason"]) for g in got],
                         [(str(dm["id"]), "dm"), (str(men["id"]), "mention")])
        self.assertEqual(got[1]["meta"]["channel"], "general")
        self.assertEqual(got[1]["meta"]["thread_id"], "t-chan")
        p.assert_silent(1.5)   # exactly once: nothing more, chatter never
        self.assertEqual(self.owed(p.agent), 0)
        for m in (early, dm, men):
            self.assertEqual(self.receipt(m["id"], p.agent)["surfaced_via"], "channel")
        take = self.assertOk(self.hub.post("/v1/delivery/%s/take" % p.agent,
                                           {"via": "hook"}))
        self.assertEqual(take["items"], [])
        self.assertEqual(p.request("ping")["result"], {})
        self.assert_clean_stdout(p)

    def test_without_option_nothing_pushed(self):
        """Without --channel nothing is pushed and the DM stays owed."""
        p = self.spawn()
        p.initialize()
        p.result("tools/list")
        self.post("bob", "not pushed", channel="direct", to_agent=p.agent)
        p.assert_silent(2.5)
        self.assertEqual(self.owed(p.agent), 1)

    def test_eof_while_waiting(self):
        """EOF while the push waits on the hub ends the process promptly and
        closes the session."""
        p = self.spawn(None, "--channel")
        self.ready(p)
        p.result("tools/list")
        wait_for(lambda: "channel: pushing" in p.stderr_text(), 10,
                 msg="the push started")   # then it sits in its long-poll
        p.close_stdin()
        self.assertEqual(p.wait(5), 0, p.stderr_text())
        wait_for(lambda: p.agent not in agents_live(self.hub), 10,
                 msg="session closed at EOF")
# ── the bridge against hubs that refuse, forget or stall ─────────────────

class FakeMcpHub:
    """A stand-in for a hub's /mcp, in a thread, that misbehaves on
    purpose. Sessions s1, s2, ... come from initialize. forget_before: a
    request in a session numbered below it gets the hub's 404 refusal (an
    id-less JSON-RPC error), as from a hub that restarted; forget_all:
    every request does; stall_init: initialize is never answered (until
    close). inits counts initializes."""

    def __init__(self):
        import http.server
        hub = self
        self.inits = 0
        self.forget_before = 0
        self.forget_all = False
        self.stall_init = False
        self.closed = threading.Event()
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, status, obj, headers=()):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.startswith("/v1/hub-info"):
                    return self.reply(200, {"ok": True, "result": {"presence_ttl_sec": 120}})
                self.reply(404, {"ok": False, "error": "not found"})

            def do_DELETE(self):
                self.reply(200, {})

            def do_POST(self):
                msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if msg.get("method") == "initialize":
                    if hub.stall_init:
                        hub.closed.wait(60)
                        return
                    with hub.lock:
                        hub.inits += 1
                        sid = "s%d" % hub.inits
                    return self.reply(200, {"jsonrpc": "2.0", "id": msg["id"], "result": {
                        "protocolVersion": "2025-11-25", "capabilities": {},
                        "serverInfo": {"name": "fake", "version": "1"}}},
                        [("Mcp-Session-Id", sid)])
                sid = self.headers.get("Mcp-Session-Id") or ""
                n = int(sid[1:]) if sid[1:].isdigit() else 0
                if hub.forget_all or n < hub.forget_before:
                    return self.reply(404, {"jsonrpc": "2.0", "error": {
                        "code": -32600, "message": "unknown MCP session"}})
                if "id" not in msg:
                    self.send_response(202)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if msg.get("method") == "tools/call":
                    time.sleep(0.05)   # calls overlap
                    result = {"content": [{"type": "text", "text": "{}"}],
                              "structuredContent": {}}
                else:
                    result = {}
                self.reply(200, {"jsonrpc": "2.0", "id": msg["id"], "result": result})

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


@arc_only
class McpBridgeTest(McpCase):
    """Every request the client sends is answered, with its id, however
    the hub behaves (refuses, forgets the session, does not answer), and
    EOF ends the bridge at once."""

    def fake(self):
        f = FakeMcpHub()
        self.addCleanup(f.close)
        return f

    def spawn_at(self, url):
        p = McpProc(["--agent", uid("br"), "--base-url", url, "--no-autostart"])
        self.addCleanup(p.cleanup)
        return p

    def test_refusal_is_answered_with_the_id(self):
        """A hub that refuses every request in our session (404 with an
        id-less error, twice: the re-opened session too): the bridge
        answers each request itself, with its id; no id-less line."""
        f = self.fake()
        f.forget_all = True
        p = self.spawn_at(f.url)
        p.initialize()
        self.assertEqual(len(p.result("tools/list")["tools"]), len(TOOLS))
        self.assertEqual(p.request("ping")["result"], {})
        r = p.call("arc_whoami")
        self.assertIs(r.get("isError"), True, r)
        self.assertIn("unknown MCP session", tool_text(r))
        self.assert_clean_stdout(p)
        self.assertTrue(all(b'"id"' in ln for ln in p.lines()), p.lines())

    def test_stalled_registration_does_not_hold_requests(self):
        """A hub that takes the connection but never answers initialize:
        tools/list and ping are answered here within seconds (not after the
        65 s a call may wait), and EOF ends the bridge at once."""
        f = self.fake()
        f.stall_init = True
        p = self.spawn_at(f.url)
        t0 = time.monotonic()
        p.initialize()
        self.assertEqual(len(p.result("tools/list", timeout=10)["tools"]), len(TOOLS))
        self.assertEqual(p.request("ping", timeout=10)["result"], {})
        self.assertLess(time.monotonic() - t0, 8)
        t0 = time.monotonic()
        p.close_stdin()
        self.assertEqual(p.wait(10), 0, p.stderr_text())
        self.assertLess(time.monotonic() - t0, 3)
        self.assert_clean_stdout(p)

    def test_lost_session_reopened_once(self):
        """The hub forgets the session (it restarted) while several calls
        and a tools/list go at once: each is answered by the hub in a new
        session, and the bridge opens exactly one, not one per thread."""
        f = self.fake()
        p = self.spawn_at(f.url)
        p.initialize()
        self.assertEqual(p.request("ping")["result"], {})
        wait_for(lambda: f.inits == 1, timeout=10, msg="no session opened")
        f.forget_before = 2
        ids = [p.send_request("tools/call", {"name": "arc_whoami", "arguments": {}})
               for _ in range(8)]
        ids.append(p.send_request("tools/list"))
        for i in ids:
            a = p.answer(i)
            self.assertIn("result", a, a)
            self.assertNotIn("isError", a["result"], a)
        self.assertEqual(f.inits, 2)
        self.assert_clean_stdout(p)

    def test_startup_stress(self):
        """For a few seconds, bridges start and at once get initialize,
        notifications/initialized, tools/list and a call (written one by
        one or in one write, as lines or with Content-Length), as Codex
        does: each is answered in time, and EOF ends each with status 0."""
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "stress", "version": "1"}}}
        rest = [{"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                 "params": {"_meta": {"progressToken": 0}}},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                 "params": {"name": "arc_whoami", "arguments": {}}}]

        def frame(m, cl):
            b = json.dumps(m).encode()
            return b"Content-Length: %d\r\n\r\n%s" % (len(b), b) if cl else b + b"\n"

        end, n = time.monotonic() + 4, 0
        while time.monotonic() < end or n < 4:
            cl, together = n % 2 == 1, n % 4 >= 2
            with self.subTest(run=n, content_length=cl, one_write=together):
                p = self.spawn()
                if together:
                    p.send_raw(b"".join(frame(m, cl) for m in [init] + rest))
                else:
                    p.send_raw(frame(init, cl))
                    for m in rest:
                        p.send_raw(frame(m, cl))
                self.assertIn("result", p.answer(0))
                self.assertEqual(len(p.answer(1)["result"]["tools"]), len(TOOLS))
                r = p.answer(2)["result"]
                self.assertNotIn("isError", r, r)
                p.close_stdin()
                self.assertEqual(p.wait(10), 0, p.stderr_text())
                self.assert_clean_stdout(p)
            n += 1


@arc_only
class McpProbeTest(McpCase):
    """Claude Code first starts a throwaway copy of a stdio server that sends
    only server/discover, then closes it, and starts the real one; two
    `arc mcp` for one agent also overlap briefly (docs/MCP.md, "Presence").
    Neither may take the agent's session or presence from the bridge in
    use."""

    def session_of(self, agent):
        return agents_live(self.hub)[agent]["session_id"]

    def presence(self, agent):
        status, _, env = self.hub.get("/v1/presence", agent_id=agent)
        self.assertEqual(status, 200, env)
        self.assertEqual(len(env["result"]), 1, env)
        return env["result"][0]["state"]

    def probe(self, agent, sends=("discover",)):
        """A throwaway `arc mcp` for agent: what it is sent, then EOF."""
        q = self.spawn(agent)
        if "discover" in sends:
            r = q.result("server/discover", {"_meta": META})
            self.assertIn(STATELESS, r["supportedVersions"], r)
        q.close_stdin()
        self.assertEqual(q.wait(10), 0, q.stderr_text())
        self.assertNotIn("registered as", q.stderr_text())
        return q

    def test_discover_probe_leaves_the_session(self):
        """A probe that sends only server/discover (once or twice: a
        corrective version) while the real bridge is registered and in use
        leaves the agent's session and presence as they were."""
        for era in ("2025-11-25", STATELESS):
            with self.subTest(era=era):
                p = self.spawn()
                if era == STATELESS:
                    p.result("server/discover", {"_meta": META})
                    r = p.call("arc_whoami", meta=META)
                else:
                    r = self.ready(p)
                sid = r["structuredContent"]["session_id"]
                self.assertEqual(self.session_of(p.agent), sid)
                self.probe(p.agent)
                q = self.spawn(p.agent)
                q.request("server/discover", {"_meta": dict(META, **{
                    "io.modelcontextprotocol/protocolVersion": "2099-01-01"})})
                q.result("server/discover", {"_meta": META})
                q.close_stdin()
                self.assertEqual(q.wait(10), 0, q.stderr_text())
                self.assertEqual(self.session_of(p.agent), sid)
                self.assertNotEqual(self.presence(p.agent), "offline")
                r = p.call("arc_whoami", meta=META if era == STATELESS else None)
                self.assertEqual(r["structuredContent"]["session_id"], sid, r)
                p.close_stdin()
                self.assertEqual(p.wait(10), 0, p.stderr_text())
                self.assertNotIn(p.agent, agents_live(self.hub))

    def test_silent_process_registers_nobody(self):
        """A process that is sent nothing, or only server/discover and a
        notification, registers nobody, neither while it runs nor at exit."""
        agent = uid("silent")
        q = self.spawn(agent)
        wait_for(lambda: "serving agent" in q.stderr_text(), timeout=ANSWER)
        end = time.monotonic() + 1.5   # asserting that registration does NOT happen
        while time.monotonic() < end:
            self.assertNotIn(agent, agents_live(self.hub))
            time.sleep(0.1)
        q.close_stdin()
        self.assertEqual(q.wait(10), 0, q.stderr_text())
        self.assertNotIn("registered as", q.stderr_text())
        q = self.spawn(agent)
        q.result("server/discover", {"_meta": META})
        q.notify("notifications/initialized")
        self.assertEqual(q.result("ping"), {})   # a real request: it registers
        wait_for(lambda: agent in agents_live(self.hub), timeout=ANSWER)
        q.close_stdin()
        self.assertEqual(q.wait(10), 0)
        for sends in ((), ("discover",)):
            self.probe(agent, sends)
            self.assertNotIn(agent, agents_live(self.hub))
            self.assertEqual(self.presence(agent), "offline")

    def test_first_request_registers(self):
        """The first request other than server/discover registers the agent
        at once, without waiting for a tool call: initialize (the handshake
        era), tools/list (the stateless era) or a ping."""
        cases = (("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "raw-test", "version": "1"}}),
                 ("tools/list", {"_meta": META}), ("ping", None))
        for method, params in cases:
            with self.subTest(method=method):
                p = self.spawn()
                p.result("server/discover", {"_meta": META})
                self.assertNotIn(p.agent, agents_live(self.hub))
                p.result(method, params)
                wait_for(lambda: p.agent in agents_live(self.hub), timeout=ANSWER)
                self.assertEqual(self.presence(p.agent), "present")
                p.close_stdin()
                self.assertEqual(p.wait(10), 0)
                self.assertNotIn(p.agent, agents_live(self.hub))

    def test_overlapping_bridges(self):
        """A second `arc mcp` for the agent takes its session; when it exits
        while the first is still in use, the session stays (the first holds
        it now), and ends when the first exits too."""
        a = self.spawn()
        self.ready(a)
        b = self.spawn(a.agent)
        sid = self.ready(b)["structuredContent"]["session_id"]
        wait_for(lambda: self.session_of(a.agent) == sid, timeout=ANSWER)
        self.assertNotIn("isError", a.call("arc_whoami"))   # a is in use
        b.close_stdin()
        self.assertEqual(b.wait(10), 0, b.stderr_text())
        self.assertEqual(self.session_of(a.agent), sid)
        self.assertNotEqual(self.presence(a.agent), "offline")
        self.assertNotIn("isError", a.call("arc_whoami"))
        a.close_stdin()
        self.assertEqual(a.wait(10), 0, a.stderr_text())
        self.assertNotIn(a.agent, agents_live(self.hub))
        self.assertEqual(self.presence(a.agent), "offline")
