"""MCP over HTTP on the hub itself: POST/DELETE/GET /mcp (arc-only).

Raw HTTP over sockets against the real hub (docs/MCP.md, PROTOCOL.md's
/mcp extension): the Streamable HTTP handshake era (initialize,
Mcp-Session-Id, MCP-Protocol-Version) and the stateless 2026-07-28
revision (server/discover, _meta, Mcp-Method/Mcp-Name checked against
the body); tools in the hub, a waiting call parked in the loop and woken
by a message, cancelled by notifications/cancelled or by closing the
socket, an SSE answer with progress for a long wait; identity
(X-Arc-Agent, ?agent=), DELETE, Origin and the token.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_mcp_http -v
"""

import json
import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hubtest import (HTTPReader, Hub, HubCase, arc_only, connect, uid,  # noqa: E402
                     wait_for)

STATELESS = "2026-07-28"
LEGACY = "2025-11-25"
META = {
    "io.modelcontextprotocol/protocolVersion": STATELESS,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw-http", "version": "1"},
}
ACCEPT = "application/json, text/event-stream"


def http(port, method, path, body=None, headers=None, sock=None, timeout=15):
    """One request on a fresh (or the given) socket; returns the Response
    (hubtest.Response: status, headers, body) or None if the hub closed."""
    own = sock is None
    s = sock or connect(port, timeout)
    try:
        data = b"" if body is None else (body if isinstance(body, bytes)
                                         else json.dumps(body).encode())
        head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % (method, path, port)
        for k, v in (headers or {}).items():
            head += "%s: %s\r\n" % (k, v)
        if body is not None:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        s.sendall(head.encode() + b"\r\n" + data)
        return HTTPReader(s, timeout).read_response()
    finally:
        if own:
            s.close()


def sse_messages(body):
    """The JSON messages of an SSE body, in order."""
    out = []
    for event in body.decode().split("\n\n"):
        for line in event.split("\n"):
            if line.startswith("data:"):
                out.append(json.loads(line[5:].strip()))
    return out


@arc_only
class McpHttpTest(HubCase):

    # helpers
    def post(self, msg, agent=None, session=None, version=None, headers=None, sock=None,
             path="/mcp", timeout=15):
        h = {"Accept": ACCEPT}
        if agent:
            h["X-Arc-Agent"] = agent
        if session:
            h["Mcp-Session-Id"] = session
        if version:
            h["MCP-Protocol-Version"] = version
        h.update(headers or {})
        return http(self.hub.port, "POST", path, msg, h, sock=sock, timeout=timeout)

    def initialize(self, agent, version=LEGACY):
        r = self.post({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"protocolVersion": version, "capabilities": {},
                                  "clientInfo": {"name": "raw-http", "version": "1"}}},
                      agent=agent)
        self.assertEqual(r.status, 200, r)
        sid = r.headers.get("mcp-session-id")
        self.assertTrue(sid, r.headers)
        self.assertEqual(r.json()["result"]["protocolVersion"], version)
        n = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"},
                      agent=agent, session=sid, version=version)
        self.assertEqual((n.status, n.body), (202, b""))
        return sid

    def call(self, agent, sid, name, args=None, id=7, meta=None, version=LEGACY, **kw):
        params = {"name": name, "arguments": args or {}}
        if meta:
            params["_meta"] = meta
        return self.post({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params},
                         agent=agent, session=sid, version=version, **kw)

    def live(self):
        status, _, env = self.hub.get("/v1/agents")
        self.assertEqual(status, 200)
        return {s["agent_id"]: s for s in env["result"]}

    def post_msg(self, frm, body, **fields):
        m = {"from_agent": frm, "channel": "general", "body": body}
        m.update(fields)
        return self.assertOk(self.hub.post("/v1/messages", m), 201)

    # the handshake era
    def test_initialize_session_and_headers(self):
        """initialize returns Mcp-Session-Id and registers the agent; a tool
        call needs the session (400 without, 404 for an unknown one), a ping
        does not; an unknown MCP-Protocol-Version is 400 with -32022 naming
        the versions we speak; errors carry the request's id."""
        agent = uid("h")
        sid = self.initialize(agent)
        self.assertIn(agent, self.live())
        r = self.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, agent=agent,
                      session=sid, version=LEGACY)
        self.assertEqual(r.status, 200, r)
        tools = r.json()["result"]["tools"]
        self.assertIn("arc_post_message", [t["name"] for t in tools])
        self.assertIn("outputSchema", tools[0])
        r = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, agent=agent)
        self.assertEqual((r.status, r.json()), (200, {"jsonrpc": "2.0", "id": 3, "result": {}}))
        r = self.call(agent, None, "arc_whoami", id=31)
        self.assertEqual(r.status, 400, r)
        self.assertEqual((r.json()["id"], r.json()["error"]["code"]), (31, -32600), r)
        self.assertIn("Mcp-Session-Id", r.json()["error"]["message"])
        r = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, agent=agent,
                      session="0" * 32)
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.json()["id"], 3, r)
        r = self.post({"jsonrpc": "2.0", "id": 3, "method": "ping"}, agent=agent,
                      session=sid, version="1999-01-01")
        self.assertEqual(r.status, 400, r)
        e = r.json()
        self.assertEqual((e["id"], e["error"]["code"]), (3, -32022), e)
        self.assertEqual(e["error"]["data"]["requested"], "1999-01-01", e)
        self.assertIn(LEGACY, e["error"]["data"]["supported"], e)
        r = self.post({"jsonrpc": "2.0", "id": 4, "method": "ping"}, agent=agent,
                      session=sid, version=LEGACY)
        self.assertEqual(r.json(), {"jsonrpc": "2.0", "id": 4, "result": {}})
        r = self.post({"jsonrpc": "2.0", "id": 5, "method": "ping"}, agent=uid("other"),
                      session=sid)
        self.assertEqual(r.status, 400, r)
        r = self.post(b"{not json", agent=agent, session=sid)
        self.assertEqual((r.status, r.json()["error"]["code"]), (400, -32700), r)

    def test_identity_required_and_validated(self):
        """Only a tool call needs an identity: without X-Arc-Agent or
        ?agent= it is 400 with a JSON-RPC error saying so (and the id);
        an invalid agent id: 400; ?agent= on the URL works."""
        msg = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": META}}
        r = self.call(None, None, "arc_whoami", id=5, meta=META, version=STATELESS,
                      headers={"Mcp-Method": "tools/call", "Mcp-Name": "arc_whoami"})
        self.assertEqual(r.status, 400, r)
        self.assertEqual((r.json()["id"], r.json()["error"]["code"]), (5, -32600), r)
        self.assertIn("X-Arc-Agent", r.json()["error"]["message"])
        r = self.post(msg, path="/mcp?agent=%20padded%01")
        self.assertEqual(r.status, 400, r)
        r = self.post(msg, agent="x" * 200)
        self.assertEqual(r.status, 400, r)
        agent = uid("q")
        r = self.post(msg, path="/mcp?agent=" + agent, headers={"Mcp-Method": "server/discover"})
        self.assertEqual(r.status, 200, r)
        self.assertIn(STATELESS, r.json()["result"]["supportedVersions"])
        self.assertIn(agent, self.live())

    def test_stateless_era(self):
        """2026-07-28: no session, _meta on every request, Mcp-Method and
        Mcp-Name must match the body; results carry resultType."""
        agent = uid("s")
        r = self.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                       "params": {"_meta": META}}, agent=agent,
                      headers={"Mcp-Method": "tools/list"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["result"]["resultType"], "complete")
        r = self.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list",
                       "params": {"_meta": META}}, agent=agent,
                      headers={"Mcp-Method": "tools/call"})
        self.assertEqual(r.status, 400, r)
        self.assertEqual((r.json()["id"], r.json()["error"]["code"]), (2, -32020), r)
        self.assertIn("Mcp-Method", r.json()["error"]["message"])
        r = self.call(agent, None, "arc_whoami", meta=META, version=None,
                      headers={"Mcp-Method": "tools/call", "Mcp-Name": "arc_list_agents"})
        self.assertEqual(r.status, 400, r)
        self.assertEqual((r.json()["id"], r.json()["error"]["code"]), (7, -32020), r)
        r = self.call(agent, None, "arc_whoami", meta=META, version=None,
                      headers={"Mcp-Method": "tools/call", "Mcp-Name": "arc_whoami"})
        self.assertEqual(r.status, 200, r)
        res = r.json()["result"]
        self.assertEqual(res["resultType"], "complete")
        self.assertEqual(res["structuredContent"]["agent_id"], agent)

    def test_no_identity_needed(self):
        """Requests that act for no agent are answered without one (a
        generic client's probe): server/discover, tools/list, ping, and
        initialize, which then opens no session; nobody registers."""
        before = set(self.live())
        r = self.post({"jsonrpc": "2.0", "id": 1, "method": "server/discover",
                       "params": {"_meta": META}}, version=STATELESS,
                      headers={"Mcp-Method": "server/discover"})
        self.assertEqual(r.status, 200, r)
        self.assertIn(STATELESS, r.json()["result"]["supportedVersions"])
        r = self.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list",
                       "params": {"_meta": META}}, version=STATELESS,
                      headers={"Mcp-Method": "tools/list"})
        self.assertEqual(r.status, 200, r)
        self.assertIn("arc_whoami", [t["name"] for t in r.json()["result"]["tools"]])
        r = self.post({"jsonrpc": "2.0", "id": 3, "method": "initialize",
                       "params": {"protocolVersion": LEGACY, "capabilities": {},
                                  "clientInfo": {"name": "probe", "version": "1"}}})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["result"]["protocolVersion"], LEGACY)
        self.assertNotIn("mcp-session-id", r.headers)
        r = self.post({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, version=LEGACY)
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("resultType", r.json()["result"])
        r = self.post({"jsonrpc": "2.0", "id": 5, "method": "ping"})
        self.assertEqual(r.json(), {"jsonrpc": "2.0", "id": 5, "result": {}})
        r = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.assertEqual((r.status, r.body), (202, b""))
        r = self.call(None, None, "arc_whoami", id=6, version=LEGACY)
        self.assertEqual(r.status, 400, r)
        self.assertEqual((r.json()["id"], r.json()["error"]["code"]), (6, -32600), r)
        self.assertIn("which agent?", r.json()["error"]["message"])
        self.assertEqual(set(self.live()), before)

    def stateless(self, method, params=None, id=1, version=STATELESS, meta=META, **kw):
        """A 2026-07-28 request with its headers, as SEP-2243 clients send it."""
        params = dict(params or {})
        if meta is not None:
            params["_meta"] = meta
        headers = {"Mcp-Method": method}
        if "name" in params:
            headers["Mcp-Name"] = params["name"]
        headers.update(kw.pop("headers", {}))
        return self.post({"jsonrpc": "2.0", "id": id, "method": method, "params": params},
                         version=version, headers=headers, **kw)

    def assert_rpc_error(self, r, status, code, id):
        self.assertEqual(r.status, status, r)
        e = r.json()
        self.assertEqual((e.get("id"), e["error"]["code"]), (id, code), e)
        return e["error"]

    def test_stateless_meta_required(self):
        """Under a 2026-07-28 MCP-Protocol-Version header, _meta must carry
        the protocol version and a clientCapabilities object: else 400 with
        -32602 and the request's id; clientInfo is optional."""
        agent = uid("m")
        self.assert_rpc_error(self.stateless("server/discover", meta=None, id=101),
                              400, -32602, 101)
        no_version = {k: v for k, v in META.items() if not k.endswith("protocolVersion")}
        self.assert_rpc_error(self.stateless("server/discover", meta=no_version, id=102),
                              400, -32602, 102)
        no_caps = {k: v for k, v in META.items() if not k.endswith("clientCapabilities")}
        self.assert_rpc_error(self.stateless("tools/list", meta=no_caps, id=104, agent=agent),
                              400, -32602, 104)
        no_info = {k: v for k, v in META.items() if not k.endswith("clientInfo")}
        r = self.stateless("server/discover", meta=no_info, id=105)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["id"], 105)

    def test_stateless_version_errors(self):
        """A version we do not speak, in header and _meta alike: 400 with
        -32022, data naming our versions and echoing the one asked for. A
        header that contradicts _meta: 400 with -32020 (HeaderMismatch)."""
        bad = dict(META, **{"io.modelcontextprotocol/protocolVersion": "v999.0.0"})
        err = self.assert_rpc_error(self.stateless("server/discover", meta=bad, id=301,
                                                   version="v999.0.0"), 400, -32022, 301)
        d = self.stateless("server/discover", id=9).json()["result"]
        self.assertEqual(err["data"]["requested"], "v999.0.0", err)
        self.assertTrue(err["data"]["supported"], err)
        self.assertTrue(set(err["data"]["supported"]) <= set(d["supportedVersions"]), err)
        err = self.assert_rpc_error(self.stateless("server/discover", meta=bad, id=302),
                                    400, -32020, 302)
        self.assertIn("MCP-Protocol-Version", err["message"])
        legacy = dict(META, **{"io.modelcontextprotocol/protocolVersion": LEGACY})
        self.assert_rpc_error(self.stateless("tools/list", meta=legacy, id=303), 400, -32020,
                              303)

    def test_stateless_removed_and_unknown_methods(self):
        """2026-07-28 removed initialize, ping, logging/setLevel and the
        resource subscriptions: like an unknown method they get HTTP 404
        with -32601 and the id; initialize opens no session. In the
        handshake era an unknown method stays in-band (200)."""
        agent = uid("r")
        for i, method in enumerate(("initialize", "ping", "logging/setLevel",
                                    "resources/subscribe", "resources/unsubscribe",
                                    "unknown/method")):
            r = self.stateless(method, id=500 + i, agent=agent)
            self.assert_rpc_error(r, 404, -32601, 500 + i)
            self.assertNotIn("mcp-session-id", r.headers)
        sid = self.initialize(agent)
        r = self.post({"jsonrpc": "2.0", "id": 9, "method": "unknown/method"}, agent=agent,
                      session=sid, version=LEGACY)
        self.assert_rpc_error(r, 200, -32601, 9)

    def test_stateless_standard_headers(self):
        """SEP-2243: Mcp-Method must match the method and be present when
        MCP-Protocol-Version is; Mcp-Name must match (around blanks) the
        field the method names (tools/call params.name, resources/read
        params.uri) and be present when Mcp-Method is; failures are 400
        with -32020 and the id."""
        agent = uid("n")
        call = {"name": "arc_whoami", "arguments": {}}
        self.assert_rpc_error(self.stateless("tools/list", id=1, agent=agent,
                                             headers={"Mcp-Method": "prompts/list"}),
                              400, -32020, 1)
        r = self.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list",
                       "params": {"_meta": META}}, agent=agent, version=STATELESS)
        self.assert_rpc_error(r, 400, -32020, 2)
        r = self.stateless("tools/call", call, id=3, agent=agent,
                           headers={"Mcp-Name": "  arc_whoami\t"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["result"]["structuredContent"]["agent_id"], agent)
        self.assert_rpc_error(self.stateless("tools/call", call, id=4, agent=agent,
                                             headers={"Mcp-Name": "wrong_tool_name"}),
                              400, -32020, 4)
        r = self.post({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                       "params": dict(call, _meta=META)}, agent=agent, version=STATELESS,
                      headers={"Mcp-Method": "tools/call"})
        self.assertIn("Mcp-Name", self.assert_rpc_error(r, 400, -32020, 5)["message"])
        # Mcp-Name mirrors params.uri for resources/read: matching, the
        # method itself is what is missing.
        r = self.stateless("resources/read", {"uri": "test://x"}, id=6,
                           headers={"Mcp-Name": "test://x"})
        self.assert_rpc_error(r, 404, -32601, 6)
        r = self.stateless("resources/read", {"uri": "test://x"}, id=7,
                           headers={"Mcp-Name": "test://y"})
        self.assert_rpc_error(r, 400, -32020, 7)
        # Without MCP-Protocol-Version (arc mcp forwarding a client's
        # _meta) the standard headers are not required.
        r = self.post({"jsonrpc": "2.0", "id": 8, "method": "tools/list",
                       "params": {"_meta": META}}, agent=agent)
        self.assertEqual(r.status, 200, r)

    def test_tool_posts_message(self):
        """arc_post_message in the hub: the message lands in /v1/messages,
        from the agent of the session."""
        agent = uid("p")
        sid = self.initialize(agent)
        body = "over http " + uid()
        r = self.call(agent, sid, "arc_post_message", {"channel": "general", "body": body})
        self.assertEqual(r.status, 200, r)
        res = r.json()["result"]
        self.assertNotIn("isError", res, res)
        status, _, env = self.hub.get("/v1/messages", channel="general", since_id=0,
                                      limit=500)
        mine = [m for m in env["result"] if m["body"] == body]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["from_agent"], agent)

    def test_parked_poll_woken_by_message(self):
        """A poll with a long timeout parks in the loop (the hub still
        answers others) and is answered the moment another agent posts."""
        agent = uid("w")
        sid = self.initialize(agent)
        s = connect(self.hub.port)
        self.addCleanup(s.close)
        msg = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
               "params": {"name": "arc_poll_messages", "arguments": {"timeout": 30}}}
        data = json.dumps(msg).encode()
        s.sendall(("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Arc-Agent: %s\r\n"
                   "Mcp-Session-Id: %s\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n" % (agent, sid, len(data))).encode() + data)
        # still served meanwhile, and the agent stays present
        self.assertEqual(self.hub.get("/v1/hub-info")[0], 200)
        self.assertIn(agent, self.live())
        body = "wake " + uid()
        t0 = time.monotonic()
        posted = self.post_msg(uid("poster"), body)
        r = HTTPReader(s, 10).read_response()
        self.assertLess(time.monotonic() - t0, 10)
        res = r.json()["result"]
        self.assertEqual([m["id"] for m in res["structuredContent"]["messages"]],
                         [posted["id"]])

    def _park(self, agent, sid, id, timeout=30):
        s = connect(self.hub.port)
        self.addCleanup(s.close)
        msg = {"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "arc_poll_messages", "arguments": {"timeout": timeout}}}
        data = json.dumps(msg).encode()
        s.sendall(("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Arc-Agent: %s\r\n"
                   "Mcp-Session-Id: %s\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n" % (agent, sid, len(data))).encode() + data)
        return s

    def test_cancel_by_notification_and_by_close(self):
        """notifications/cancelled ends a parked call (202 with no JSON-RPC
        answer); so does closing the socket. The hub stays responsive,
        and a message posted later is not lost to the cancelled polls."""
        agent = uid("c")
        sid = self.initialize(agent)
        s = self._park(agent, sid, "call-1")
        reader = HTTPReader(s, 10)
        got = []

        def cancelled():   # the notification may overtake the call: repeat it
            self.assertEqual(self.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                        "params": {"requestId": "call-1"}},
                                       agent=agent, session=sid).status, 202)
            s.settimeout(0.3)
            try:
                got.append(reader.read_response())
            except socket.timeout:
                return False
            return True
        wait_for(cancelled, timeout=10, msg="the parked call was not cancelled")
        # no JSON-RPC answer for a cancelled request: 202, no body
        self.assertEqual((got[0].status, got[0].body), (202, b""))
        s2 = self._park(agent, sid, "call-2")
        s2.close()
        self.assertEqual(self.hub.get("/v1/hub-info")[0], 200)
        body = "after cancel " + uid()
        self.post_msg(uid("poster"), body)
        r = self.call(agent, sid, "arc_poll_messages", {"timeout": 5})
        self.assertIn(body, [m["body"] for m in r.json()["result"]["structuredContent"]["messages"]])

    def test_delete_ends_session(self):
        """DELETE /mcp ends the session (the agent leaves); the session id
        is then unknown (404)."""
        agent = uid("d")
        sid = self.initialize(agent)
        self.assertIn(agent, self.live())
        r = http(self.hub.port, "DELETE", "/mcp", None,
                 {"X-Arc-Agent": agent, "Mcp-Session-Id": sid})
        self.assertEqual(r.status, 200, r)
        self.assertNotIn(agent, self.live())
        r = self.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, agent=agent, session=sid)
        self.assertEqual(r.status, 404, r)
        r = http(self.hub.port, "GET", "/mcp", None, {"X-Arc-Agent": agent})
        self.assertEqual(r.status, 405, r)

    def test_foreign_origin_refused(self):
        r = self.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, agent=uid("o"),
                      headers={"Origin": "http://evil.example"})
        self.assertEqual(r.status, 403, r)

    def test_sse_progress_for_a_long_wait(self):
        """A waiting call with a progressToken, from a client that accepts
        SSE, is answered as an event stream: progress notifications every
        slice (5 s), then the result, then the connection closes."""
        agent = uid("sse")
        sid = self.initialize(agent)
        msg = {"jsonrpc": "2.0", "id": 11, "method": "tools/call",
               "params": {"name": "arc_poll_messages", "arguments": {"timeout": 7},
                          "_meta": {"progressToken": "tok-1"}}}
        r = self.post(msg, agent=agent, session=sid, timeout=30)
        self.assertEqual(r.status, 200, r)
        self.assertIn("text/event-stream", r.headers["content-type"])
        msgs = sse_messages(r.body)
        notes = [m for m in msgs if m.get("method") == "notifications/progress"]
        self.assertGreaterEqual(len(notes), 1, msgs)
        self.assertEqual(notes[0]["params"]["progressToken"], "tok-1")
        self.assertEqual(notes[0]["params"]["total"], 7)
        self.assertEqual(msgs[-1]["id"], 11)
        self.assertEqual(json.loads(msgs[-1]["result"]["content"][0]["text"]), [])

    def test_hub_info_advertises_mcp(self):
        status, _, env = self.hub.get("/v1/hub-info")
        self.assertIn("arc:mcp", env["result"]["features"])
        self.assertEqual(env["result"]["mcp_path"], "/mcp")


@arc_only
class McpHttpTokenTest(HubCase):
    TOKEN = "mcphttp-" + "5a" * 16

    @classmethod
    def setUpClass(cls):
        unittest.TestCase.setUpClass()
        cls.hub = Hub(token=cls.TOKEN).start(cls.hub_args)

    def test_token_required(self):
        msg = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": META}}
        h = {"X-Arc-Agent": uid("t"), "Accept": ACCEPT}
        r = http(self.hub.port, "POST", "/mcp", msg, h)
        self.assertEqual(r.status, 401, r)
        h["Authorization"] = "Bearer " + self.TOKEN
        r = http(self.hub.port, "POST", "/mcp", msg, h)
        self.assertEqual(r.status, 200, r)


if __name__ == "__main__":
    unittest.main()
