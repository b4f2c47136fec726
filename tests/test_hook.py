"""`arc hook HARNESS EVENT` (PROTOCOL §16.6): each harness's documented
stdin JSON fed to the real binary against a real hub, its stdout and exit
status checked; no hub means no output and exit 0, fast; hooks and CLI
calls never replace the agent's live `arc mcp` session."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

from hubtest import Hub, HubCase, arc_only, free_port, hub_command, uid, wait_for
from test_mcp import McpCase


def hook_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("ARC_URL", "ARC_AGENT", "ARC_RELAY_DIR", "CLAUDE_PROJECT_DIR",
                        "CLAUDE_CODE_ENTRYPOINT")}
    env.update(extra or {})
    return env


def run_hook(url, harness, event, stdin, agent=None, cwd=None, timeout=20, args=(),
             env=None):
    argv = hub_command() + ["hook", harness, event] + list(args)
    if agent:
        argv += ["--agent", agent]
    return subprocess.run(argv, input=json.dumps(stdin), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or tempfile.gettempdir(),
                          env=hook_env(dict(env or {}, ARC_URL=url)))


@arc_only
class HookTests(HubCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="arc-hook-")
        self.agent = uid("hk")

    def hook(self, harness, event, stdin, agent=True, **kw):
        stdin = dict(stdin)
        stdin.setdefault("cwd", self.dir)
        p = run_hook(self.hub.url, harness, event, stdin,
                     agent=self.agent if agent is True else agent, **kw)
        return p

    def out(self, p):
        self.assertEqual(p.returncode, 0, p)
        return json.loads(p.stdout) if p.stdout.strip() else None

    def msg(self, **body):
        return self.assertOk(self.hub.post("/v1/messages", body), 201)

    def base(self, event, **more):
        d = {"session_id": "s1", "transcript_path": "/tmp/t.jsonl", "cwd": self.dir,
             "hook_event_name": event}
        d.update(more)
        return d

    def test_claude_prompt_and_tool_context_exactly_once(self):
        dm = self.msg(from_agent="bob", to_agent=self.agent, body="the build is red")
        self.msg(from_agent="bob", body="chatter for nobody")
        o = self.out(self.hook("claude", "UserPromptSubmit",
                               self.base("UserPromptSubmit", prompt="go")))
        h = o["hookSpecificOutput"]
        self.assertEqual(h["hookEventName"], "UserPromptSubmit")
        self.assertIn("#%d from bob" % dm["id"], h["additionalContext"])
        self.assertIn("the build is red", h["additionalContext"])
        self.assertNotIn("chatter", h["additionalContext"])
        # the same message never again, through any path
        self.assertIsNone(self.out(self.hook("claude", "PostToolUse", self.base(
            "PostToolUse", tool_name="Bash", tool_input={"command": "ls"},
            tool_response={}))))
        got = self.assertOk(self.hub.get("/v1/events", agent_id=self.agent,
                                         since_id=dm["id"] - 1, surfaced="poll"))
        self.assertEqual([m["body"] for m in got], ["chatter for nobody"])   # §16.4
        got = self.assertOk(self.hub.get("/v1/events", agent_id=self.agent,
                                         since_id=dm["id"] - 1))
        self.assertEqual([m["id"] for m in got][:1], [dm["id"]])   # a v1 read shows it
        m2 = self.msg(from_agent="carol", body="@%s have a look" % self.agent)
        h = self.out(self.hook("claude", "PostToolUse", self.base(
            "PostToolUse", tool_name="Bash", tool_input={}, tool_response={})))
        self.assertIn("#%d from carol (mention" % m2["id"],
                      h["hookSpecificOutput"]["additionalContext"])

    def test_context_cap_and_more(self):
        sent = [self.msg(from_agent="bob", to_agent=self.agent,
                         body=("m%d " % i) + "y" * 1400)["id"] for i in range(12)]
        seen = []
        for turn in range(6):
            o = self.out(self.hook("claude", "UserPromptSubmit", self.base(
                "UserPromptSubmit", prompt="x")))
            if o is None:
                break
            ctx = o["hookSpecificOutput"]["additionalContext"]
            self.assertLess(len(ctx), 10000)
            seen += [int(x) for x in re.findall(r"^- #(\d+) ", ctx, re.M)]
            if turn == 0:
                self.assertRegex(ctx, r"\n\d+ more owed: .*arc_inbox")
        self.assertEqual(seen, sent)   # all of them, each once, in order

    def test_session_start_digest(self):
        self.assertOk(self.hub.post("/v1/sessions", {"agent_id": "peer-" + self.agent}), 201)
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": self.agent,
                                                  "file_path": "src/mine.c"}), 201)
        req = self.msg(from_agent="bob", to_agent=self.agent, kind="task_request",
                       body="please review")
        h = self.out(self.hook("claude", "SessionStart", self.base(
            "SessionStart", source="startup")))["hookSpecificOutput"]
        self.assertEqual(h["hookEventName"], "SessionStart")
        ctx = h["additionalContext"]
        self.assertIn("you are agent %s" % self.agent, ctx)
        self.assertIn("peer-" + self.agent, ctx)
        self.assertIn("Your locks: src/mine.c", ctx)
        self.assertIn("#%d from bob (request" % req["id"], ctx)
        self.assertIn("unanswered", ctx)

    def test_identity_from_file(self):
        os.makedirs(os.path.join(self.dir, ".arc"))
        with open(os.path.join(self.dir, ".arc", "agent"), "w") as f:
            f.write(self.agent + "\n")
        sub = os.path.join(self.dir, "src", "deep")
        os.makedirs(sub)
        dm = self.msg(from_agent="bob", to_agent=self.agent, body="found you")
        p = run_hook(self.hub.url, "claude", "UserPromptSubmit",
                     {"cwd": sub, "hook_event_name": "UserPromptSubmit", "prompt": "x"})
        self.assertIn("#%d" % dm["id"], self.out(p)["hookSpecificOutput"]["additionalContext"])
        # no identity at all: nothing, exit 0
        p = run_hook(self.hub.url, "claude", "UserPromptSubmit",
                     {"cwd": tempfile.gettempdir(), "prompt": "x"})
        self.assertEqual((p.returncode, p.stdout), (0, ""))

    def test_identity_files_per_harness_and_home(self):
        """PROTOCOL §16.6: .arc/agent-HARNESS, then .arc/agent, from cwd up,
        then ~/.arc/agent-HARNESS (what `arc setup` writes per scope)."""
        home = tempfile.mkdtemp(prefix="arc-home-")
        proj = os.path.join(self.dir, "p")
        sub = os.path.join(proj, "src")
        os.makedirs(sub)
        os.makedirs(os.path.join(proj, ".arc"))
        os.makedirs(os.path.join(home, ".arc"))
        per, shared, user = uid("per"), uid("shared"), uid("user")
        for path, name in ((os.path.join(proj, ".arc", "agent-claude"), per),
                           (os.path.join(proj, ".arc", "agent"), shared),
                           (os.path.join(home, ".arc", "agent-claude"), user),
                           (os.path.join(home, ".arc", "agent-codex"), user)):
            with open(path, "w") as f:
                f.write(name + "\n")

        def who(harness, cwd):
            """The agent the hook acted as: the DM it surfaced."""
            ids = {}
            for a in (per, shared, user):
                ids[a] = self.msg(from_agent="bob", to_agent=a, body="to " + a)["id"]
            ev = {"gemini": "BeforeAgent", "cursor": "postToolUse"}.get(
                harness, "UserPromptSubmit")
            p = subprocess.run(hub_command() + ["hook", harness, ev],
                               input=json.dumps({"cwd": cwd, "prompt": "x"}),
                               capture_output=True, text=True, timeout=20,
                               env=hook_env({"ARC_URL": self.hub.url, "HOME": home}))
            self.assertEqual(p.returncode, 0, p)
            for a in (per, shared, user):   # leave nothing owed behind
                self.hub.post("/v1/delivery/%s/take" % a, {"limit": 100})
            return [a for a in ids if "#%d " % ids[a] in p.stdout]
        self.assertEqual(who("claude", sub), [per])       # per harness first
        self.assertEqual(who("gemini", sub), [shared])    # then the shared file
        self.assertEqual(who("codex", tempfile.gettempdir()), [user])   # then ~
        self.assertEqual(who("cursor", tempfile.gettempdir()), [])      # none

    def test_identity_file_hostile(self):
        """An agent file that is a link, a FIFO, a hard link, too big or not
        a name is not read (and a FIFO does not hang the hook)."""
        arc_dir = os.path.join(self.dir, ".arc")
        os.makedirs(arc_dir)
        f = os.path.join(arc_dir, "agent-claude")
        other = os.path.join(self.dir, "elsewhere")
        with open(other, "w") as fh:
            fh.write(self.agent + "\n")
        dm = self.msg(from_agent="bob", to_agent=self.agent, body="not for a link")

        def put(text):
            with open(f, "w") as fh:
                fh.write(text)
        cases = [("symlink", lambda: os.symlink(other, f)),
                 ("fifo", lambda: os.mkfifo(f)),
                 ("hardlink", lambda: os.link(other, f)),
                 ("big", lambda: put(self.agent + "\n" + "#" * 400)),
                 ("not a name", lambda: put("bob smith\n")),
                 ("dot", lambda: put("..\n"))]
        for name, make in cases:
            with self.subTest(name):
                make()
                p = run_hook(self.hub.url, "claude", "UserPromptSubmit",
                             {"cwd": self.dir, "prompt": "x"}, timeout=10)
                self.assertEqual((p.returncode, p.stdout), (0, ""), p)
                os.unlink(f)
        with open(f, "w") as fh:   # and the real thing works
            fh.write(self.agent + "\n")
        p = run_hook(self.hub.url, "claude", "UserPromptSubmit", {"cwd": self.dir})
        self.assertIn("#%d " % dm["id"], p.stdout)

    def test_stop_continues_for_open_request_bounded(self):
        req = self.msg(from_agent="bob", to_agent=self.agent, kind="task_request",
                       body="ship it")
        self.assertIsNone(self.out(self.hook("claude", "Stop", self.base(
            "Stop", stop_hook_active=False), agent="someone-else")))
        reasons = []
        for i in range(4):
            o = self.out(self.hook("claude", "Stop", self.base(
                "Stop", stop_hook_active=i > 0)))
            reasons.append(o)
        for o in reasons[:3]:
            self.assertEqual(o["decision"], "block")
            self.assertIn("#%d from bob (request" % req["id"], o["reason"])
        self.assertIsNone(reasons[3])   # at most 3 continuations per request
        req2 = self.msg(from_agent="bob", to_agent=self.agent, kind="task_request",
                        body="and this")
        self.msg(from_agent=self.agent, to_agent="bob", kind="task_result",
                 body="done", reply_to=req2["id"])
        self.assertIsNone(self.out(self.hook("claude", "Stop", self.base("Stop"))))

    def test_pre_tool_use_lock_denial(self):
        holder = uid("holder")
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": holder,
                                                  "file_path": "src/locked.c"}), 201)
        os.makedirs(os.path.join(self.dir, ".arc"))
        with open(os.path.join(self.dir, ".arc", "agent"), "w") as f:
            f.write(self.agent)
        target = os.path.join(self.dir, "src", "locked.c")
        for tool, key in (("Edit", "file_path"), ("Write", "file_path"),
                          ("MultiEdit", "file_path"), ("NotebookEdit", "notebook_path")):
            with self.subTest(tool):
                o = self.out(self.hook("claude", "PreToolUse", self.base(
                    "PreToolUse", tool_name=tool, tool_input={key: target}), agent=None))
                h = o["hookSpecificOutput"]
                self.assertEqual((h["hookEventName"], h["permissionDecision"]),
                                 ("PreToolUse", "deny"))
                self.assertIn("locked by agent %s" % holder, h["permissionDecisionReason"])
                self.assertIn(" until 20", h["permissionDecisionReason"])
        # a relative path with dots, from a subdirectory
        o = self.out(self.hook("claude", "PreToolUse", self.base(
            "PreToolUse", cwd=os.path.join(self.dir, "src"), tool_name="Edit",
            tool_input={"file_path": "./../src/locked.c"}), agent=None))
        self.assertEqual(o["hookSpecificOutput"]["permissionDecision"], "deny")
        # other files, other tools, and the holder itself pass
        for tool, path, who in (("Edit", os.path.join(self.dir, "src", "free.c"), None),
                                ("Bash", target, None), ("Edit", target, holder)):
            self.assertIsNone(self.out(self.hook("claude", "PreToolUse", self.base(
                "PreToolUse", tool_name=tool, tool_input={"file_path": path}),
                agent=who)))
        o = self.out(self.hook("gemini", "BeforeTool", self.base(
            "BeforeTool", tool_name="write_file", tool_input={"file_path": target}),
            agent=None))
        self.assertEqual(o["decision"], "deny")
        self.assertIn(holder, o["reason"])

    def test_codex_patch_headers(self):
        """Codex's apply_patch names its files in tool_input.command: every
        Add/Update/Delete/Move-to header is checked, indented ones too."""
        holder, rel = uid("holder"), "lib/%s.c" % uid("held")
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": holder,
                                                  "file_path": rel}), 201)
        for patch in ("*** Begin Patch\n*** Update File: a.c\n*** Move to: %s\n"
                      "*** End Patch\n" % rel,
                      "*** Begin Patch\n  *** Delete File: %s\n*** End Patch" % rel,
                      "*** Begin Patch\n*** Add File: x\n+1\n*** Update File: %s/%s\n"
                      % (self.dir, rel)):
            o = self.out(self.hook("codex", "PreToolUse", self.base(
                "PreToolUse", tool_name="apply_patch", tool_input={"command": patch})))
            h = o["hookSpecificOutput"]
            self.assertEqual(h["permissionDecision"], "deny", patch)
            self.assertIn("locked by agent %s" % holder, h["permissionDecisionReason"])
        for tool, inp in (("apply_patch", {"command": "*** Update File: other.c\n"}),
                          ("apply_patch", {"command": "+++ %s\n" % rel}),
                          ("Bash", {"command": "*** Update File: %s\n" % rel})):
            self.assertIsNone(self.out(self.hook("codex", "PreToolUse", self.base(
                "PreToolUse", tool_name=tool, tool_input=inp))))

    def test_session_end_closes(self):
        s = self.assertOk(self.hub.post("/v1/sessions", {"agent_id": self.agent}), 201)
        self.assertIsNone(self.out(self.hook("claude", "SessionEnd", self.base(
            "SessionEnd", reason="exit"))))
        agents = self.assertOk(self.hub.get("/v1/agents"))
        self.assertNotIn(s["session_id"], [a["session_id"] for a in agents])

    def test_wait_wakes_with_exit_2(self):
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("p", self.hook(
            "claude", "wait", self.base("SessionStart"), args=["--timeout", "20"],
            timeout=30)))
        t0 = time.monotonic()
        t.start()
        time.sleep(0.3)
        self.msg(from_agent="bob", body="chatter does not wake")
        time.sleep(0.3)
        dm = self.msg(from_agent="bob", to_agent=self.agent, body="wake up")
        t.join(25)
        p = out["p"]
        self.assertEqual(p.returncode, 2, p)
        self.assertIn("#%d from bob" % dm["id"], p.stderr)
        self.assertNotIn("chatter", p.stderr)
        self.assertLess(time.monotonic() - t0, 15)
        p = self.hook("claude", "wait", self.base("SessionStart"), args=["--timeout", "0.2"])
        self.assertEqual((p.returncode, p.stdout, p.stderr), (0, "", ""))

    def test_wait_is_a_no_op_without_a_terminal_session(self):
        """`claude -p` (CLAUDE_CODE_ENTRYPOINT=sdk-cli) and the Agent SDKs
        hold their exit until asyncRewake hooks end: wait returns at once
        there and takes nothing, so what is owed stays owed."""
        dm = self.msg(from_agent="bob", to_agent=self.agent, body="for later")
        for entry in ("sdk-cli", "sdk-ts", "sdk-py"):
            t0 = time.monotonic()
            p = self.hook("claude", "wait", self.base("Stop"), args=["--timeout", "20"],
                          env={"CLAUDE_CODE_ENTRYPOINT": entry})
            self.assertEqual((p.returncode, p.stdout, p.stderr), (0, "", ""))
            self.assertLess(time.monotonic() - t0, 5)
        owed = self.assertOk(self.hub.get("/v1/delivery/" + self.agent))
        self.assertEqual([i["message"]["id"] for i in owed["items"]], [dm["id"]])
        p = self.hook("claude", "wait", self.base("Stop"), args=["--timeout", "20"],
                      env={"CLAUDE_CODE_ENTRYPOINT": "cli"})
        self.assertEqual(p.returncode, 2, p)
        self.assertIn("#%d from bob" % dm["id"], p.stderr)

    def test_other_harnesses(self):
        dm = self.msg(from_agent="bob", to_agent=self.agent, body="for codex")
        h = self.out(self.hook("codex", "UserPromptSubmit", self.base(
            "UserPromptSubmit", prompt="x", turn_id="t1")))["hookSpecificOutput"]
        self.assertEqual(h["hookEventName"], "UserPromptSubmit")
        self.assertIn("#%d" % dm["id"], h["additionalContext"])
        dm = self.msg(from_agent="bob", to_agent=self.agent, body="codex stop")
        o = self.out(self.hook("codex", "Stop", self.base("Stop", stop_hook_active=False)))
        self.assertEqual(o["decision"], "block")
        self.assertIn("codex stop", o["reason"])
        dm = self.msg(from_agent="bob", to_agent=self.agent, body="for gemini")
        h = self.out(self.hook("gemini", "BeforeAgent", self.base(
            "BeforeAgent", prompt="x")))["hookSpecificOutput"]
        self.assertEqual(h["hookEventName"], "BeforeAgent")
        self.assertIn("for gemini", h["additionalContext"])
        self.msg(from_agent="bob", to_agent=self.agent, body="gemini after")
        o = self.out(self.hook("gemini", "AfterAgent", self.base(
            "AfterAgent", prompt="x", prompt_response="y", stop_hook_active=False)))
        self.assertEqual(o["decision"], "deny")
        self.assertIn("gemini after", o["reason"])
        self.msg(from_agent="bob", to_agent=self.agent, body="cursor stop")
        o = self.out(self.hook("cursor", "stop", {"status": "completed", "loop_count": 0}))
        self.assertIn("cursor stop", o["followup_message"])
        self.msg(from_agent="bob", to_agent=self.agent, body="cursor start")
        o = self.out(self.hook("cursor", "sessionStart", {}))
        self.assertIn("cursor start", o["additional_context"])
        # unknown events and bad input: nothing, exit 0
        for harness, event, stdin in (("claude", "Notification", {}), ("nope", "x", {}),
                                      ("claude", "UserPromptSubmit", "not json")):
            p = run_hook(self.hub.url, harness, event, stdin, agent=self.agent)
            self.assertEqual((p.returncode, p.stdout), (0, ""), p)


class RefusingProxy:
    """A hub in front of the real one that refuses every presence report
    (400 for POST .../state and for any body naming a state), as a hub
    without arc:presence or a stricter one might, and passes the rest."""

    def __init__(self, target):
        import http.client
        import http.server
        tgt = urllib.parse.urlsplit(target)
        self.refused = 0
        proxy = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def relay(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if self.path.split("?")[0].endswith("/state") or b'"state' in body:
                    proxy.refused += 1
                    status, data = 400, b'{"ok":false,"error":"no presence here"}'
                else:
                    c = http.client.HTTPConnection(tgt.hostname, tgt.port, timeout=30)
                    c.request(self.command, self.path, body=body or None,
                              headers={"Content-Type": "application/json"})
                    r = c.getresponse()
                    status, data = r.status, r.read()
                    c.close()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@arc_only
class PresenceHookTests(HubCase):
    """Hooks report what the agent is doing (PROTOCOL §17.5, §16.6): each
    harness's events leave the state GET /v1/presence shows, with the
    harness's pid (here the test process: the hook's parent) watched."""

    setUp, hook, out, msg, base = (HookTests.setUp, HookTests.hook, HookTests.out,
                                   HookTests.msg, HookTests.base)

    def presence(self):
        pr = self.assertOk(self.hub.get("/v1/presence", agent_id=self.agent))
        return pr[0]

    def run_events(self, harness, steps):
        for event, stdin, want in steps:
            with self.subTest(harness=harness, event=event, want=want):
                p = self.hook(harness, event, stdin,
                              args=["--timeout", "0.2"] if event == "wait" else ())
                self.assertEqual(p.returncode, 0, p)
                got = self.presence()
                self.assertEqual(got["state"], want, (event, p))
                self.assertEqual(got["pid"], None if want == "offline" else os.getpid())

    def test_states_of_every_harness(self):
        S = lambda h, ev: _fill(HOOK_SAMPLES[h][ev], self.dir, "free.c")
        self.run_events("claude", [
            ("SessionStart", S("claude", "SessionStart"), "idle"),
            ("UserPromptSubmit", S("claude", "UserPromptSubmit"), "working"),
            ("Notification", S("claude", "Notification"), "waiting"),
            ("PostToolUse", S("claude", "PostToolUse"), "working"),
            ("Notification", dict(S("claude", "Notification"),
                                  notification_type="auth_success"), "working"),
            ("Stop", S("claude", "Stop"), "idle"),
            ("Notification", dict(S("claude", "Notification"),
                                  notification_type="idle_prompt"), "idle"),
            ("Notification", dict(S("claude", "Notification"),
                                  notification_type="elicitation_dialog"), "waiting"),
            ("PreToolUse", S("claude", "PreToolUse"), "working"),
            ("Stop", S("claude", "Stop"), "idle"),
            ("SessionEnd", S("claude", "SessionEnd"), "offline"),
        ])
        self.run_events("codex", [
            ("SessionStart", S("codex", "SessionStart"), "idle"),
            ("UserPromptSubmit", S("codex", "UserPromptSubmit"), "working"),
            ("Stop", S("codex", "Stop"), "idle"),
            ("PreToolUse", S("codex", "PreToolUse"), "working"),
            ("Stop", S("codex", "Stop"), "idle"),
            ("PostToolUse", S("codex", "PostToolUse"), "working"),
        ])
        self.run_events("gemini", [
            ("SessionStart", S("gemini", "SessionStart"), "idle"),
            ("BeforeAgent", S("gemini", "BeforeAgent"), "working"),
            ("Notification", S("gemini", "Notification"), "waiting"),
            ("AfterTool", S("gemini", "AfterTool"), "working"),
            ("AfterAgent", S("gemini", "AfterAgent"), "idle"),
            ("BeforeTool", S("gemini", "BeforeTool"), "working"),
            ("SessionEnd", S("gemini", "SessionEnd"), "offline"),
        ])
        self.run_events("cursor", [
            ("sessionStart", S("cursor", "sessionStart"), "idle"),
            ("preToolUse", S("cursor", "preToolUse"), "working"),
            ("stop", S("cursor", "stop"), "idle"),
            ("postToolUse", S("cursor", "postToolUse"), "working"),
            ("sessionEnd", S("cursor", "sessionEnd"), "offline"),
        ])
        self.run_events("opencode", [
            ("PreToolUse", S("opencode", "PreToolUse"), "working"),
            ("wait", S("opencode", "wait"), "idle"),   # runs when a session goes idle
            ("PostToolUse", S("opencode", "PostToolUse"), "working"),
        ])

    def test_blocking_stop_leaves_the_agent_working(self):
        self.hook("claude", "UserPromptSubmit", self.base("UserPromptSubmit", prompt="x"))
        since = self.presence()["state_since"]
        self.msg(from_agent="bob", to_agent=self.agent, kind="task_request", body="do it")
        for i in range(3):   # each Stop continues the turn: still working, since then
            o = self.out(self.hook("claude", "Stop", self.base("Stop")))
            self.assertEqual(o["decision"], "block")
            self.assertEqual(self.presence()["state"], "working")
            self.assertEqual(self.presence()["state_since"], since)
        self.assertIsNone(self.out(self.hook("claude", "Stop", self.base("Stop"))))
        self.assertEqual(self.presence()["state"], "idle")   # reminders spent: it ended
        # a harness whose Stop also carries new messages: blocked by one, working
        for harness, event in (("codex", "Stop"), ("gemini", "AfterAgent"),
                               ("cursor", "stop")):
            self.hook("codex", "UserPromptSubmit", self.base("UserPromptSubmit"))
            self.msg(from_agent="bob", to_agent=self.agent, body="news for " + harness)
            self.assertIn("news for " + harness, self.hook(harness, event, self.base(
                event, stop_hook_active=False)).stdout)
            self.assertEqual(self.presence()["state"], "working", harness)
            self.assertEqual(self.hook(harness, event, self.base(event)).stdout, "")
            self.assertEqual(self.presence()["state"], "idle", harness)

    def test_session_start_after_an_absence(self):
        """The digest of §17.6 is what is owed (the take shows it, oldest
        first) and since when the agent was away: each message once."""
        self.hook("claude", "SessionStart", self.base("SessionStart"))
        self.hook("claude", "SessionEnd", self.base("SessionEnd"))
        gone = self.presence()
        self.assertEqual(gone["state"], "offline")
        sent = [self.msg(from_agent="bob", to_agent=self.agent, body="while away %d" % i)
                for i in range(3)]
        ctx = self.out(self.hook("claude", "SessionStart", self.base("SessionStart")))[
            "hookSpecificOutput"]["additionalContext"]
        self.assertIn("Away (offline) since %s." % gone["state_since"], ctx)
        self.assertEqual([int(x) for x in re.findall(r"^- #(\d+) ", ctx, re.M)],
                         [m["id"] for m in sent])
        self.assertEqual(self.presence()["state"], "idle")
        self.assertIsNone(self.out(self.hook("claude", "UserPromptSubmit",
                                             self.base("UserPromptSubmit"))))
        ctx = self.out(self.hook("claude", "SessionStart", self.base("SessionStart")))[
            "hookSpecificOutput"]["additionalContext"]
        self.assertNotIn("Away", ctx)   # it was not away this time

    def test_refused_presence_never_breaks_the_answer(self):
        proxy = RefusingProxy(self.hub.url)
        self.addCleanup(proxy.close)

        def hook(harness, event, stdin):
            stdin = dict(stdin, cwd=self.dir)
            return run_hook(proxy.url, harness, event, stdin, agent=self.agent)
        s = self.assertOk(self.hub.post("/v1/sessions", {"agent_id": self.agent}), 201)
        self.msg(from_agent="bob", to_agent=self.agent, body="first")
        p = hook("claude", "SessionStart", self.base("SessionStart"))
        self.assertIn("first", p.stdout)
        self.msg(from_agent="bob", to_agent=self.agent, body="second")
        p = hook("claude", "UserPromptSubmit", self.base("UserPromptSubmit"))
        self.assertIn("second", p.stdout)
        self.msg(from_agent="bob", to_agent=self.agent, kind="task_request", body="third")
        p = hook("claude", "Stop", self.base("Stop"))
        self.assertEqual(json.loads(p.stdout)["decision"], "block")
        self.msg(from_agent="bob", to_agent=self.agent, body="fourth")
        p = hook("codex", "Stop", self.base("Stop"))
        self.assertIn("fourth", p.stdout)
        p = hook("claude", "Notification", self.base("Notification"))
        self.assertEqual((p.returncode, p.stdout), (0, ""))
        p = hook("claude", "SessionEnd", self.base("SessionEnd"))   # closed by hand
        self.assertEqual((p.returncode, p.stdout), (0, ""))
        live = [a["session_id"] for a in self.assertOk(self.hub.get("/v1/agents"))]
        self.assertNotIn(s["session_id"], live)
        self.assertGreaterEqual(proxy.refused, 6)

    def test_take_and_nudge_carry_the_report(self):
        take, nudge = ("/v1/delivery/%s/%s" % (self.agent, w) for w in ("take", "nudge"))
        e = self.assertErr(self.hub.post(take, {"state": "busy"}), 400)
        self.assertIn("state must be working, idle, waiting or present", str(e))
        self.assertErr(self.hub.post(take, {"state_if_any": "offline"}), 400)
        self.assertErr(self.hub.post(take, {"state": "idle", "pid": 0, "pid_start": 1}),
                       400)
        self.assertOk(self.hub.post(take, {"state": "working"}))
        self.assertEqual((self.presence()["state"], self.presence()["pid"]),
                         ("working", None))
        self.assertOk(self.hub.post(nudge, {"state": "idle", "state_if_any": "working"}))
        self.assertEqual(self.presence()["state"], "idle")
        self.msg(from_agent="bob", to_agent=self.agent, kind="task_request", body="q")
        got = self.assertOk(self.hub.post(nudge, {"state": "idle",
                                                  "state_if_any": "working"}))
        self.assertEqual(len(got["requests"]), 1)
        self.assertEqual(self.presence()["state"], "working")
        got = self.assertOk(self.hub.post(take, {"state_if_any": "waiting"}))
        self.assertEqual(len(got["items"]), 1)
        self.assertEqual(self.presence()["state"], "waiting")
        self.assertOk(self.hub.post(take, {"state_if_any": "idle"}))   # nothing: no report
        self.assertEqual(self.presence()["state"], "waiting")
        self.assertOk(self.hub.post(take, {"state": "idle", "pid": os.getpid(),
                                           "pid_start": _start_ticks(os.getpid())}))
        self.assertEqual((self.presence()["state"], self.presence()["pid"]),
                         ("idle", os.getpid()))


def _start_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


# What each harness documents on a hook's stdin, per event (the fields a
# hook reads, plus enough of the rest to look like the real thing). {proj}
# stands for the project directory, {locked} for a file another agent holds
# a lock on. Every event `arc setup` registers must have a sample here.
_CLAUDE = {"session_id": "s1", "transcript_path": "/tmp/t.jsonl", "cwd": "{proj}",
           "permission_mode": "default"}
_CODEX = {"session_id": "s1", "transcript_path": None, "cwd": "{proj}",
          "model": "gpt-5", "turn_id": "t1"}
_GEMINI = {"session_id": "s1", "transcript_path": "/tmp/t.json", "cwd": "{proj}",
           "timestamp": "2026-01-01T00:00:00Z"}
_CURSOR = {"conversation_id": "c1", "generation_id": "g1", "model": "auto",
           "cursor_version": "2.0.77", "workspace_roots": ["{proj}"],
           "user_email": None}
_PATCH = ("*** Begin Patch\n*** Add File: notes.txt\n+hi\n"
          "*** Update File: {lockrel}\n@@\n-a\n+b\n*** End Patch\n")
HOOK_SAMPLES = {
    "claude": {
        "SessionStart": dict(_CLAUDE, source="startup"),
        "UserPromptSubmit": dict(_CLAUDE, prompt="go on"),
        "PreToolUse": dict(_CLAUDE, tool_name="Edit", tool_use_id="u1", tool_input={
            "file_path": "{locked}", "old_string": "a", "new_string": "b"}),
        "PostToolUse": dict(_CLAUDE, tool_name="Bash", tool_input={"command": "ls"},
                            tool_response={"stdout": "", "stderr": ""}),
        "Stop": dict(_CLAUDE, stop_hook_active=False),
        "wait": dict(_CLAUDE, stop_hook_active=False),
        "SessionEnd": dict(_CLAUDE, reason="exit"),
        "Notification": dict(_CLAUDE, message="Claude needs your permission to use Bash",
                             notification_type="permission_prompt"),
    },
    "codex": {
        "SessionStart": dict(_CODEX, source="startup"),
        "UserPromptSubmit": dict(_CODEX, prompt="go on"),
        "PreToolUse": dict(_CODEX, tool_name="apply_patch", tool_use_id="u1",
                           tool_input={"command": _PATCH}),
        "PostToolUse": dict(_CODEX, tool_name="Bash", tool_use_id="u2",
                            tool_input={"command": "ls"}, tool_response="ok"),
        "Stop": dict(_CODEX, stop_hook_active=False, last_assistant_message="done"),
    },
    "gemini": {
        "SessionStart": dict(_GEMINI, source="startup"),
        "BeforeAgent": dict(_GEMINI, prompt="go on"),
        "BeforeTool": dict(_GEMINI, tool_name="write_file", tool_input={
            "file_path": "{locked}", "content": "x"}),
        "AfterTool": dict(_GEMINI, tool_name="run_shell_command",
                          tool_input={"command": "ls"},
                          tool_response={"llmContent": "ok", "returnDisplay": "ok"}),
        "AfterAgent": dict(_GEMINI, prompt="go on", prompt_response="done",
                           stop_hook_active=False),
        "SessionEnd": dict(_GEMINI, reason="exit"),
        "Notification": dict(_GEMINI, notification_type="ToolPermission",
                             message="Tool run_shell_command requires confirmation",
                             details={"type": "exec", "command": "ls"}),
    },
    "cursor": {
        "sessionStart": dict(_CURSOR, session_id="s1", is_background_agent=False,
                             composer_mode="agent"),
        "preToolUse": dict(_CURSOR, tool_name="Write", tool_use_id="u1",
                           tool_input={"file_path": "{locked}", "content": "x"}),
        "postToolUse": dict(_CURSOR, tool_name="Shell", tool_use_id="u2",
                            tool_input={"command": "ls"}, tool_output="ok"),
        "stop": dict(_CURSOR, status="completed", loop_count=0),
        "sessionEnd": dict(_CURSOR, session_id="s1", reason="completed"),
    },
    # what the plugin setup writes passes (see setup_plugin_text)
    "opencode": {
        "PreToolUse": {"session_id": "s1", "cwd": "{proj}", "tool_name": "edit",
                       "tool_input": {"filePath": "{locked}", "oldString": "a",
                                      "newString": "b"}},
        "PostToolUse": {"session_id": "s1", "cwd": "{proj}", "tool_name": "bash",
                        "tool_input": {}},
        "wait": {"session_id": "s1", "cwd": "{proj}"},
    },
}
# The job each event does (PROTOCOL §16.6).
HOOK_JOBS = {
    "SessionStart": "start", "sessionStart": "start",
    "UserPromptSubmit": "turn", "PostToolUse": "turn", "BeforeAgent": "turn",
    "AfterTool": "turn", "postToolUse": "turn",
    "Stop": "stop", "AfterAgent": "stop", "stop": "stop",
    "PreToolUse": "edit", "BeforeTool": "edit", "preToolUse": "edit",
    "SessionEnd": "end", "sessionEnd": "end", "wait": "wait",
    "Notification": "state",
}


def _fill(v, proj, rel):
    """The sample v with {proj}, {locked} (proj/rel) and {lockrel} filled."""
    if isinstance(v, str):
        return v.replace("{proj}", proj).replace("{locked}", os.path.join(proj, rel)) \
            .replace("{lockrel}", rel)
    if isinstance(v, dict):
        return {k: _fill(x, proj, rel) for k, x in v.items()}
    if isinstance(v, list):
        return [_fill(x, proj, rel) for x in v]
    return v


def setup_hook_commands(harness, proj):
    """(event key, event word of the command, matcher, argv or shell command)
    of every hook `arc setup HARNESS` wrote under proj."""
    out = []
    if harness == "opencode":
        with open(os.path.join(proj, ".opencode", "plugins", "arc.js")) as f:
            js = f.read()
        arc = json.loads(re.search(r"^const ARC = (.*);$", js, re.M).group(1))
        agent = json.loads(re.search(r"^const AGENT = (.*);$", js, re.M).group(1))
        for ev in re.findall(r'\bhook\("([A-Za-z]+)"', js):
            out.append((ev, ev, None, [arc, "hook", "opencode", ev, "--agent", agent]))
        return out
    f = {"claude": ".claude/settings.json", "codex": ".codex/hooks.json",
         "gemini": ".gemini/settings.json", "cursor": ".cursor/hooks.json"}[harness]
    with open(os.path.join(proj, f)) as fh:
        hooks = json.load(fh)["hooks"]
    for key, entries in hooks.items():
        for e in entries:
            for h in e.get("hooks", [e]):
                words = h["command"].split()
                out.append((key, words[3], e.get("matcher"), h["command"]))
    return out


@arc_only
class SetupWiringTests(HubCase):
    """Every hook `arc setup HARNESS` writes is one `arc hook` answers: each
    registered command is run as written, fed its harness's documented
    stdin, and its answer checked against that harness's contract."""

    def wired(self, harness):
        tmp = tempfile.mkdtemp(prefix="arc-wire-")
        proj, home = os.path.join(tmp, "proj"), os.path.join(tmp, "home")
        os.makedirs(os.path.join(proj, "src"))
        os.makedirs(home)
        agent = uid(harness)
        env = hook_env({"HOME": home, "ARC_URL": self.hub.url})
        p = subprocess.run(hub_command() + ["setup", harness, "--agent", agent],
                           cwd=proj, env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p)
        return proj, env, agent

    def run_cmd(self, cmd, stdin, proj, env):
        return subprocess.run(cmd, shell=isinstance(cmd, str), input=json.dumps(stdin),
                              capture_output=True, text=True, timeout=30, cwd=proj, env=env)

    def check(self, harness, key, job, p, agent, holder, body):
        where = "%s %s: %r" % (harness, key, p)
        if job == "edit" and harness == "opencode":
            self.assertEqual(p.returncode, 2, where)
            self.assertIn("locked by agent %s" % holder, p.stderr)
            return
        if job == "wait" and harness == "claude":   # asyncRewake: exit 2, stderr
            self.assertEqual((p.returncode, p.stdout), (2, ""), where)
            self.assertIn(body, p.stderr)
            return
        self.assertEqual(p.returncode, 0, where)
        if job in ("end", "state"):
            self.assertEqual(p.stdout, "", where)
            if job == "state":   # a prompt waits on a human (PROTOCOL §17.5)
                pr = self.assertOk(self.hub.get("/v1/presence", agent_id=agent))
                self.assertEqual(pr[0]["state"], "waiting", where)
            return
        if harness == "opencode":   # plain text, the plugin passes it on
            self.assertIn(body, p.stdout, where)
            return
        o = json.loads(p.stdout)
        if harness == "cursor":
            field = {"start": "additional_context", "turn": "additional_context",
                     "stop": "followup_message", "edit": "agent_message"}[job]
            text = o[field]
            if job == "edit":
                self.assertEqual(o["permission"], "deny", where)
                self.assertIn(holder, o["user_message"])
        elif job in ("start", "turn"):
            h = o["hookSpecificOutput"]
            self.assertEqual(h["hookEventName"], key, where)
            text = h["additionalContext"]
        elif job == "stop":
            self.assertEqual(o["decision"], "deny" if harness == "gemini" else "block",
                             where)
            text = o["reason"]
        elif harness == "gemini":   # edit
            self.assertEqual(o["decision"], "deny", where)
            text = o["reason"]
        else:
            h = o["hookSpecificOutput"]
            self.assertEqual((h["hookEventName"], h["permissionDecision"]),
                             (key, "deny"), where)
            text = h["permissionDecisionReason"]
        if job == "edit":
            self.assertIn("locked by agent %s" % holder, text, where)
            self.assertIn(" until 20", text, where)
        elif job == "start":
            self.assertIn("you are agent %s" % agent, text, where)
        else:
            self.assertIn(body, text, where)

    def test_every_registered_event_answers(self):
        for harness in ("claude", "codex", "gemini", "cursor", "opencode"):
            proj, env, agent = self.wired(harness)
            holder, rel = uid("holder"), "src/%s.c" % uid("locked")
            self.assertOk(self.hub.post("/v1/locks", {"agent_id": holder,
                                                      "file_path": rel}), 201)
            cmds = setup_hook_commands(harness, proj)
            self.assertEqual(sorted({c[1] for c in cmds}), sorted(HOOK_SAMPLES[harness]),
                             harness)
            for key, event, matcher, cmd in cmds:
                with self.subTest(harness=harness, event=event):
                    job = HOOK_JOBS[event]
                    stdin = _fill(HOOK_SAMPLES[harness][event], proj, rel)
                    stdin["hook_event_name"] = key
                    if matcher and "tool_name" in stdin:   # the harness would run it
                        self.assertRegex(stdin["tool_name"], "^(%s)$" % matcher)
                    body = "for %s at %s %s" % (agent, event, uid("m"))
                    kind = "task_request" if job == "stop" else "chat"
                    if job == "state":   # says nothing to the agent: nothing to send
                        p = self.run_cmd(cmd, stdin, proj, env)
                        self.check(harness, key, job, p, agent, holder, "")
                        continue
                    self.assertOk(self.hub.post("/v1/messages", {
                        "from_agent": "bob", "to_agent": agent, "kind": kind,
                        "body": body}), 201)
                    if job == "end":
                        s = self.assertOk(self.hub.post("/v1/sessions",
                                                        {"agent_id": agent}), 201)
                    p = self.run_cmd(cmd, stdin, proj, env)
                    self.check(harness, key, job, p, agent, holder, body)
                    if job == "end":
                        live = [a["session_id"] for a in
                                self.assertOk(self.hub.get("/v1/agents"))]
                        self.assertNotIn(s["session_id"], live)
                    if job == "edit":   # the same edit elsewhere passes
                        free = _fill(HOOK_SAMPLES[harness][event], proj, "src/free.c")
                        free["hook_event_name"] = key
                        p = self.run_cmd(cmd, free, proj, env)
                        self.assertEqual((p.returncode, p.stdout), (0, ""), p)
                    # take what the event left owed, so the next starts clean
                    self.hub.post("/v1/delivery/%s/take" % agent, {"limit": 100})

    @unittest.skipUnless(shutil.which("node"), "needs node")
    def test_opencode_plugin_drives_the_hook(self):
        """The plugin file itself, under Node with a stand-in OpenCode client:
        tool.execute.before refuses a locked edit, tool.execute.after carries
        owed messages, session.idle wakes the session with promptAsync."""
        proj, env, agent = self.wired("opencode")
        holder, rel = uid("holder"), "src/%s.c" % uid("locked")
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": holder,
                                                  "file_path": rel}), 201)
        d1, d2 = uid("after-tool"), uid("wake")
        plugin = os.path.join(proj, "plugin.mjs")
        shutil.copy(os.path.join(proj, ".opencode", "plugins", "arc.js"), plugin)
        driver = os.path.join(proj, "drive.mjs")
        with open(driver, "w") as f:
            f.write("""
import { ArcPlugin } from "./plugin.mjs";
const [dir, url, agent, d2, rel] = process.argv.slice(2);
const prompts = [];
const client = { session: { promptAsync: async (a) => { prompts.push(a); } } };
const hooks = await ArcPlugin({ client, directory: dir });
const res = {};
try {
  await hooks["tool.execute.before"]({ tool: "edit", sessionID: "s1", callID: "c1" },
    { args: { filePath: dir + "/" + rel, oldString: "a", newString: "b" } });
  res.before = "allowed";
} catch (e) { res.before = String(e.message); }
await hooks["tool.execute.before"]({ tool: "edit", sessionID: "s1", callID: "c2" },
  { args: { filePath: dir + "/src/free.c" } });
const out = { title: "", output: "file list", metadata: {} };
await hooks["tool.execute.after"]({ tool: "bash", sessionID: "s1", callID: "c3" }, out);
res.after = out.output;
await hooks.event({ event: { type: "session.idle", properties: { sessionID: "s1" } } });
await fetch(url + "/v1/messages", { method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ from_agent: "bob", to_agent: agent, body: d2 }) });
for (let i = 0; i < 200 && !prompts.length; i++) await new Promise((r) => setTimeout(r, 50));
res.prompts = prompts;
console.log(JSON.stringify(res));
process.exit(0);
""")
        self.assertOk(self.hub.post("/v1/messages", {"from_agent": "bob", "to_agent": agent,
                                                     "body": d1}), 201)
        p = subprocess.run(["node", driver, proj, self.hub.url, agent, d2, rel], cwd=proj,
                           env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p)
        res = json.loads(p.stdout)
        self.assertIn("locked by agent %s" % holder, res["before"])
        self.assertTrue(res["after"].startswith("file list\n\n"), res)
        self.assertIn(d1, res["after"])
        self.assertEqual(len(res["prompts"]), 1, res)
        pr = res["prompts"][0]
        self.assertEqual(pr["path"], {"id": "s1"})
        self.assertIn(d2, pr["body"]["parts"][0]["text"])


@arc_only
class HookNoHubTests(unittest.TestCase):

    def test_no_hub_is_silent_and_fast(self):
        url = "http://127.0.0.1:%d" % free_port()
        for harness, event in (("claude", "SessionStart"), ("claude", "UserPromptSubmit"),
                               ("claude", "Stop"), ("claude", "PreToolUse"),
                               ("claude", "SessionEnd"), ("claude", "wait"),
                               ("codex", "Stop"), ("gemini", "AfterAgent"),
                               ("cursor", "stop")):
            with self.subTest(harness=harness, event=event):
                t0 = time.monotonic()
                p = run_hook(url, harness, event, {"cwd": "/", "tool_name": "Edit",
                                                   "tool_input": {"file_path": "/x"}},
                             agent="a")
                self.assertEqual((p.returncode, p.stdout), (0, ""), p)
                self.assertLess(time.monotonic() - t0, 2.0)

    def test_usage_error_never_exits_2(self):
        p = subprocess.run(hub_command() + ["hook", "--bogus"], capture_output=True,
                           text=True, timeout=10, env=hook_env())
        self.assertEqual(p.returncode, 1, p)


@arc_only
class LiveSessionTests(McpCase):
    """Hooks and arc post/poll act as the agent without taking over the
    session of its running `arc mcp` (issue 18)."""

    def test_mcp_session_not_replaced(self):
        p = self.spawn()
        self.ready(p)

        def sessions():
            return [s["session_id"] for s in self.assertOk(self.hub.get("/v1/agents"))
                    if s["agent_id"] == p.agent]
        before = sessions()
        self.assertEqual(len(before), 1)
        env = hook_env({"ARC_URL": self.hub.url})
        for args in (["poll", "--agent", p.agent, "--timeout", "0"],
                     ["post", "--agent", p.agent, "hello"],
                     ["whoami", "--agent", p.agent]):
            r = subprocess.run(hub_command() + args, capture_output=True, text=True,
                               timeout=20, env=env)
            self.assertEqual(r.returncode, 0, r)
        for event in ("SessionStart", "UserPromptSubmit", "PostToolUse", "Stop"):
            r = run_hook(self.hub.url, "claude", event, {"cwd": "/"}, agent=p.agent)
            self.assertEqual(r.returncode, 0, r)
        self.assertEqual(sessions(), before)
        # and the server still works as the agent, with no complaint
        r = p.call("arc_whoami")
        self.assertNotIn("isError", r, r)
        self.assertNotIn("another process registered", p.stderr_text())

    def test_poll_tool_marks_surfaced(self):
        p = self.spawn()
        self.ready(p)
        self.post("bob", "for the mcp agent", channel="direct", to_agent=p.agent)
        r = p.call("arc_poll_messages", {"wait_seconds": 0})
        self.assertIn("for the mcp agent", json.dumps(r))
        got = self.assertOk(self.hub.post("/v1/delivery/%s/take" % p.agent, {}))
        self.assertEqual(got["items"], [])


if __name__ == "__main__":
    unittest.main()
