"""`arc hook HARNESS EVENT` (PROTOCOL §16.6): each harness's documented
stdin JSON fed to the real binary against a real hub, its stdout and exit
status checked; no hub means no output and exit 0, fast; hooks and CLI
calls never replace the agent's live `arc mcp` session."""

import json
import os
import re
import subprocess
import tempfile
import threading
import time
import unittest

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
        self.assertEqual([m["id"] for m in got][:1], [dm["id"]])   # poll still shows it
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
