"""arc's MCP server as real clients see it: Claude Code, Codex, Gemini CLI
and the MCP Inspector, from npm, pinned (tests/clients/package.json;
tests/setup-clients.sh installs them, make test runs it).

- Each client's own MCP listing reports arc connected: over stdio
  (`arc mcp --agent NAME`, added with the client's own `mcp add`) and over
  HTTP (the hub's /mcp with an X-Arc-Agent header; skipped until the hub
  advertises MCP over HTTP in GET /v1/hub-info).
- Claude Code (`claude -p`), Codex (`codex exec`) and Gemini CLI
  (`gemini -p`) each run a non-interactive turn against tests/fakemodel.py
  (Anthropic Messages, OpenAI Responses, Gemini API), whose scripted first reply
  calls arc_post_message: the message must land in the hub and the tool's
  result must reach the model in the next request.

Every process runs in a network namespace with loopback only, HOME in a
temporary directory, telemetry and updates off, and every proxy variable
pointing at a trap that records any host a client tries to reach (see
tests/harness.py); each test asserts the trap stayed empty. Tests skip
with the reason when an install or the namespace is missing.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_harness_mcp -v
"""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from fakemodel import FakeModel  # noqa: E402
from hubtest import arc_only, uid  # noqa: E402

LIST_DEADLINE = 90    # seconds for one listing command (each takes 1-5 s)
TURN_DEADLINE = 120   # seconds for one model turn (each takes 2-6 s)


def hub_mcp_path(hub):
    """The hub's MCP-over-HTTP path, or None when hub-info advertises none:
    a `mcp_path` field, or a feature token containing "mcp" (then /mcp)."""
    status, _, info = hub.request("GET", "/v1/hub-info")
    if status != 200 or not isinstance(info, dict):
        return None
    res = info.get("result") or {}
    if isinstance(res.get("mcp_path"), str):
        return res["mcp_path"]
    if any("mcp" in str(f).lower() for f in res.get("features") or []):
        return "/mcp"
    return None


class ClientCase(harness.NsCase):
    """One namespace, proxy trap and hub per class; a fresh HOME per test."""

    maxDiff = None

    # helpers
    def home(self):
        h = harness.Home()
        self.addCleanup(h.cleanup)
        return h

    def run_client(self, client, argv, home, extra=None, timeout=LIST_DEADLINE):
        env = harness.client_env(home, client, self.trap_url, extra)
        if client in harness.BINS:
            argv = [harness.BINS[client]] + list(argv)
        r = harness.run(self.ns, argv, env, home.project, timeout=timeout)
        self.assertIsNotNone(r.code, "timed out:\n%r" % r)
        return r

    def http_url(self):
        """The hub's /mcp URL, or skip the test."""
        path = hub_mcp_path(self.hub)
        if not path:
            self.skipTest("the hub does not advertise MCP over HTTP in /v1/hub-info "
                          "(no mcp_path, no feature token with 'mcp')")
        return self.hub.url + path

    def stdio_command(self, agent):
        return harness.arc_stdio(self.hub, agent)


# ── Listings ───────────────────────────────────────────────────────────

@arc_only
class ClaudeListTest(ClientCase):
    needs = ("claude",)

    def listed(self, home):
        r = self.run_client("claude", ["mcp", "list"], home)
        self.assertEqual(r.code, 0, r)
        lines = [ln for ln in r.out.splitlines() if ln.startswith("arc:")]
        self.assertEqual(len(lines), 1, r)
        return lines[0]

    def test_stdio_connected(self):
        home = self.home()
        harness.write_claude_config(home, {})
        cmd, args = self.stdio_command(uid("claude"))
        r = self.run_client("claude", ["mcp", "add", "-s", "user", "arc", "--", cmd] + args,
                            home)
        self.assertEqual(r.code, 0, r)
        self.assertIn("Connected", self.listed(home))

    def test_http_connected(self):
        url = self.http_url()
        home = self.home()
        harness.write_claude_config(home, {})
        r = self.run_client("claude", ["mcp", "add", "-s", "user", "--transport", "http",
                                       "arc", url, "--header",
                                       "X-Arc-Agent: " + uid("claude")], home)
        self.assertEqual(r.code, 0, r)
        line = self.listed(home)
        self.assertIn("(HTTP)", line)
        self.assertIn("Connected", line)


@arc_only
class CodexListTest(ClientCase):
    """`codex mcp list` shows the configuration without starting servers
    (Codex 0.171 has no listing that connects): the listing checks that
    Codex took arc's entry; CodexTurnTest is where Codex connects."""
    needs = ("codex",)

    def listed(self, home):
        harness.write_codex_config(home, {})
        return home

    def entry(self, home):
        r = self.run_client("codex", ["mcp", "list", "--json"], home)
        self.assertEqual(r.code, 0, r)
        servers = {s["name"]: s for s in json.loads(r.out)}
        self.assertIn("arc", servers, r)
        self.assertTrue(servers["arc"]["enabled"], r)
        return servers["arc"]

    def test_stdio_listed(self):
        home = self.home()
        harness.write_codex_config(home, {})
        cmd, args = self.stdio_command(uid("codex"))
        r = self.run_client("codex", ["mcp", "add", "arc", "--", cmd] + args, home)
        self.assertEqual(r.code, 0, r)
        t = self.entry(home)["transport"]
        self.assertEqual((t["type"], t["command"], t["args"]), ("stdio", cmd, args))

    def test_http_listed(self):
        url = self.http_url()
        home = self.home()
        harness.write_codex_config(home, {"arc": {"url": url, "headers": {
            "X-Arc-Agent": uid("codex")}}})
        t = self.entry(home)["transport"]
        self.assertEqual((t["type"], t["url"]), ("streamable_http", url))


@arc_only
class GeminiListTest(ClientCase):
    needs = ("gemini",)
    key = {"GEMINI_API_KEY": harness.FAKE_KEY}

    def listed(self, home):
        r = self.run_client("gemini", ["mcp", "list"], home, self.key)
        self.assertEqual(r.code, 0, r)
        text = r.out + r.err              # 0.61 prints the list on stderr
        lines = [ln for ln in text.splitlines() if " arc:" in ln]
        self.assertEqual(len(lines), 1, r)
        return lines[0]

    def test_stdio_connected(self):
        home = self.home()
        harness.write_gemini_config(home, {})
        cmd, args = self.stdio_command(uid("gemini"))
        r = self.run_client("gemini", ["mcp", "add", "-s", "user", "arc", cmd] + args,
                            home, self.key)
        self.assertEqual(r.code, 0, r)
        line = self.listed(home)
        self.assertIn("(stdio)", line)
        self.assertIn("Connected", line)

    def test_http_connected(self):
        url = self.http_url()
        home = self.home()
        harness.write_gemini_config(home, {})
        r = self.run_client("gemini", ["mcp", "add", "-s", "user", "--transport", "http",
                                       "arc", url, "--header",
                                       "X-Arc-Agent: " + uid("gemini")], home, self.key)
        self.assertEqual(r.code, 0, r)
        line = self.listed(home)
        self.assertIn("(http)", line)
        self.assertIn("Connected", line)


@arc_only
class InspectorListTest(ClientCase):
    """The Inspector's CLI mode (Node 22): tools/list through arc."""
    needs = ("inspector",)

    def tools(self, target_args):
        home = self.home()
        r = self.run_client("inspector", harness.node22_argv(
            harness.INSPECTOR, "--cli", *target_args, "--method", "tools/list"), home)
        self.assertEqual(r.code, 0, r)
        names = [t["name"] for t in json.loads(r.out)["tools"]]
        self.assertIn("arc_post_message", names)
        self.assertIn("arc_poll_messages", names)
        self.assertTrue(all(n.startswith("arc_") for n in names), names)
        return names

    def test_stdio_tools(self):
        cmd, args = self.stdio_command(uid("inspector"))
        self.tools([cmd] + args)

    def test_http_tools(self):
        url = self.http_url()
        self.tools([url, "--transport", "http", "--header",
                    "X-Arc-Agent: " + uid("inspector")])


# ── Turns against the fake model ───────────────────────────────────────

class TurnCase(ClientCase):
    """A fake model per test, scripted: turn 1 calls arc_post_message with
    a unique body, turn 2 answers in text."""

    def model(self, channel, body):
        script = [[{"text": "Posting."},
                   {"tool": "arc_post_message",
                    "input": {"channel": channel, "body": body}}],
                  [{"text": "Posted."}]]
        m = FakeModel(script).start(bind=self.ns.call)
        self.addCleanup(m.close)
        return m

    def channel(self):
        name = uid("ch")
        status, _, payload = self.hub.request("POST", "/v1/channels", body={"name": name})
        self.assertEqual(status, 201, payload)
        return name

    def note_tool_defs(self, client, defs):
        """Record what arc's tool definitions cost in this client's request
        (issue 17 asks for it per client) in tests/out/mcp-tool-defs.txt."""
        size = len(json.dumps(defs, separators=(",", ":")))
        os.makedirs(harness.OUT, exist_ok=True)
        with open(os.path.join(harness.OUT, "mcp-tool-defs.txt"), "a") as f:
            f.write("%s %s: %d arc tools, %d characters of JSON\n"
                    % (client, self.id().rsplit(".", 1)[-1], len(defs), size))

    def landed(self, channel, agent, body):
        status, _, payload = self.hub.request("GET", "/v1/messages?channel=" + channel)
        self.assertEqual(status, 200, payload)
        got = [(m["from_agent"], m["body"]) for m in payload["result"]]
        self.assertEqual(got, [(agent, body)])


@arc_only
class ClaudeTurnTest(TurnCase):
    needs = ("claude",)

    def turn(self, servers, agent, channel, body):
        m = self.model(channel, body)
        home = self.home()
        harness.write_claude_config(home, servers)
        r = self.run_client("claude", [
            "-p", "Post a greeting to the team channel.", "--output-format", "json",
            "--model", "claude-sonnet-4-5", "--max-turns", "4",
            "--allowedTools", "mcp__arc__arc_post_message"], home,
            {"ANTHROPIC_BASE_URL": m.url, "ANTHROPIC_API_KEY": harness.FAKE_KEY},
            timeout=TURN_DEADLINE)
        self.assertEqual(r.code, 0, r)
        out = json.loads(r.out)
        self.assertEqual((out.get("is_error"), out.get("result")), (False, "Posted."), r)
        self.landed(channel, agent, body)
        # The first main request offers arc's tools; the next carries the
        # tool's result, which names the posted body.
        main = [q["body"] for q in m.snapshot()
                if q["path"].startswith("/v1/messages") and isinstance(q["body"], dict)
                and q["body"].get("tools")]
        self.assertEqual(len(main), 2, [q["path"] for q in m.snapshot()])
        offered = [t["name"] for t in main[0]["tools"]]
        self.assertIn("mcp__arc__arc_post_message", offered)
        self.note_tool_defs("claude", [t for t in main[0]["tools"]
                                       if t["name"].startswith("mcp__arc__")])
        use = main[1]["messages"][-2]["content"][-1]
        result = main[1]["messages"][-1]["content"][0]
        self.assertEqual((use["type"], use["name"]),
                         ("tool_use", "mcp__arc__arc_post_message"))
        self.assertEqual((result["type"], result["tool_use_id"]),
                         ("tool_result", use["id"]))
        self.assertFalse(result.get("is_error"), result)
        self.assertIn(body, json.dumps(result["content"]))

    def test_stdio_turn(self):
        agent, channel, body = uid("claude"), self.channel(), uid("hello")
        cmd, args = self.stdio_command(agent)
        self.turn({"arc": {"type": "stdio", "command": cmd, "args": args}},
                  agent, channel, body)

    def test_http_turn(self):
        url = self.http_url()
        agent, channel, body = uid("claude"), self.channel(), uid("hello")
        self.turn({"arc": {"type": "http", "url": url,
                           "headers": {"X-Arc-Agent": agent}}}, agent, channel, body)


@arc_only
class CodexTurnTest(TurnCase):
    needs = ("codex",)

    def turn(self, servers, agent, channel, body):
        m = self.model(channel, body)
        home = self.home()
        harness.write_codex_config(home, servers, m.url)
        r = self.run_client("codex", [
            "exec", "--json", "--skip-git-repo-check",
            "Post a greeting to the team channel."], home,
            {"FAKE_OPENAI_KEY": harness.FAKE_KEY}, timeout=TURN_DEADLINE)
        self.assertEqual(r.code, 0, r)
        events = [json.loads(ln) for ln in r.out.splitlines() if ln.startswith("{")]
        calls = [e["item"] for e in events if e.get("type") == "item.completed"
                 and e["item"].get("type") == "mcp_tool_call"]
        self.assertEqual([(c["server"], c["tool"], c["status"]) for c in calls],
                         [("arc", "arc_post_message", "completed")], r)
        said = [e["item"]["text"] for e in events if e.get("type") == "item.completed"
                and e["item"].get("type") == "agent_message"]
        self.assertEqual(said, ["Posting.", "Posted."], r)
        self.landed(channel, agent, body)
        main = [q["body"] for q in m.snapshot()
                if q["path"] == "/v1/responses" and isinstance(q["body"], dict)]
        self.assertEqual(len(main), 2, [q["path"] for q in m.snapshot()])
        self.note_tool_defs("codex", [t for t in main[0]["tools"]
                                      if t.get("name") == "mcp__arc"])
        call = [it for it in main[1]["input"] if it.get("type") == "function_call"][-1]
        out = main[1]["input"][-1]
        self.assertEqual((call["name"], call.get("namespace")),
                         ("arc_post_message", "mcp__arc"))
        self.assertEqual((out["type"], out["call_id"]),
                         ("function_call_output", call["call_id"]))
        self.assertIn(body, json.dumps(out["output"]))

    def test_stdio_turn(self):
        agent, channel, body = uid("codex"), self.channel(), uid("hello")
        cmd, args = self.stdio_command(agent)
        self.turn({"arc": {"command": cmd, "args": args}}, agent, channel, body)

    def test_http_turn(self):
        url = self.http_url()
        agent, channel, body = uid("codex"), self.channel(), uid("hello")
        self.turn({"arc": {"url": url, "headers": {"X-Arc-Agent": agent}}},
                  agent, channel, body)


@arc_only
class GeminiTurnTest(TurnCase):
    """Gemini CLI speaks the Gemini API to GOOGLE_GEMINI_BASE_URL, so it
    runs a turn against the fake model too (`gemini -p`)."""
    needs = ("gemini",)

    def turn(self, server, agent, channel, body):
        m = self.model(channel, body)
        home = self.home()
        harness.write_gemini_config(home, {"arc": dict(server, trust=True)})
        r = self.run_client("gemini", [
            "-p", "Post a greeting to the team channel.", "--output-format", "json",
            "--model", "gemini-2.5-flash"], home,
            {"GEMINI_API_KEY": harness.FAKE_KEY, "GOOGLE_GEMINI_BASE_URL": m.url},
            timeout=TURN_DEADLINE)
        self.assertEqual(r.code, 0, r)
        self.assertEqual(json.loads(r.out).get("response"), "Posted.", r)
        self.landed(channel, agent, body)
        main = [q["body"] for q in m.snapshot()
                if ":streamGenerateContent" in q["path"] and isinstance(q["body"], dict)]
        self.assertEqual(len(main), 2, [q["path"] for q in m.snapshot()])
        self.note_tool_defs("gemini", [f for t in main[0]["tools"]
                                       for f in t.get("functionDeclarations") or []
                                       if f["name"].startswith("mcp_arc_")])
        call = [p["functionCall"] for p in main[1]["contents"][-2]["parts"]
                if "functionCall" in p][0]
        answer = [p["functionResponse"] for p in main[1]["contents"][-1]["parts"]
                  if "functionResponse" in p][0]
        self.assertEqual((call["name"], answer["name"]),
                         ("mcp_arc_arc_post_message", "mcp_arc_arc_post_message"))
        self.assertIn(body, json.dumps(answer["response"]))

    def test_stdio_turn(self):
        agent, channel, body = uid("gemini"), self.channel(), uid("hello")
        cmd, args = self.stdio_command(agent)
        self.turn({"command": cmd, "args": args}, agent, channel, body)

    def test_http_turn(self):
        url = self.http_url()
        agent, channel, body = uid("gemini"), self.channel(), uid("hello")
        self.turn({"httpUrl": url, "headers": {"X-Arc-Agent": agent}},
                  agent, channel, body)


if __name__ == "__main__":
    unittest.main()
