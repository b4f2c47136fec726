"""Messages reach agents inside their turns, with the real harnesses
(issue 18, "Tests with the real harnesses").

Each test makes a fresh project, runs the real `arc setup HARNESS --agent
NAME` in it (exit 0), and drives the harness (Claude Code, Codex, Gemini
CLI from tests/clients, pinned) against tests/fakemodel.py, which records
every request the harness makes to the model. The hub listens on
127.0.0.1:6969 inside the test's network namespace (tests/harness.py), the
address setup's entries use when no ARC_URL is set, so the harness, its
`arc mcp` and its `arc hook` commands find it exactly as they would on a
developer's machine. What the tests check, per harness as far as its hooks
allow:

1. a DM posted before the turn reaches the model's first request
   (SessionStart / UserPromptSubmit context);
2. a DM posted while the turn runs (when the fake model receives a
   request whose reply calls a tool) reaches the request after the
   tool's PostToolUse;
3. no message reaches the model twice across hooks, `arc poll` (run by
   the model through Bash) and the MCP tool arc_poll_messages: a unique
   token per message is counted in the final request, which holds the
   whole conversation;
4. an Edit/Write of a path another agent locked (POST /v1/locks) is
   denied naming the holder, and the file is unchanged;
5. an unanswered task_request continues the turn (Stop) until the model
   answers it with arc_task_result, and the turn then ends;
6. an idle interactive Claude Code session (under tmux) is woken by a DM
   through setup's `arc hook claude wait` asyncRewake hook.

What each harness did (the hooks that fired, where each message reached
the model) is appended to tests/out/harness-hooks.txt as the tests run.
Tests skip with the reason when a client, tmux or the namespace is
missing.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_harness_hooks -v
"""

import json
import os
import shlex
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from fakemodel import FakeModel  # noqa: E402
from hubtest import arc_only, hub_command, uid  # noqa: E402

HUB_PORT = 6969       # the default every setup entry reaches without ARC_URL
TURN_DEADLINE = 90    # seconds for one harness run (each takes 2-8 s)
WAKE_DEADLINE = 20    # seconds from a DM to the woken session's request
REPORT = os.path.join(harness.OUT, "harness-hooks.txt")


def report(*lines):
    """Append lines to tests/out/harness-hooks.txt (the issue's note)."""
    os.makedirs(harness.OUT, exist_ok=True)
    with open(REPORT, "a") as f:
        for ln in lines:
            f.write(ln + "\n")


def setUpModule():
    """Start tests/out/harness-hooks.txt afresh for this run."""
    os.makedirs(harness.OUT, exist_ok=True)
    with open(REPORT, "w") as f:
        f.write("arc hooks with real harnesses (tests/test_harness_hooks.py): %s\n"
                % ", ".join("%s %s" % kv for kv in sorted(harness.VERSIONS.items())
                            if kv[0] in ("claude", "codex", "gemini")))


class Model(FakeModel):
    """The fake model, calling on_main(n, entry) when it receives its
    n-th main request (one offering tools; 1-based) before it answers:
    that is where a test posts what should arrive "while the turn runs"."""

    def __init__(self, script, on_main=None, sequential=False):
        super().__init__(script)
        self.on_main = on_main
        self.n_main = 0
        self.sequential = sequential

    def turn(self, index, offered):
        """sequential: the n-th main request gets script[n-1], whatever
        the conversation holds (a turn a Stop hook continued has no new
        function call, which the Responses and Gemini indices count)."""
        if self.sequential and offered:
            with self.lock:
                index = self.n_main - 1
        return super().turn(index, offered)

    def record(self, entry):
        super().record(entry)
        if is_main(entry):
            with self.lock:
                self.n_main += 1
                n = self.n_main
            if self.on_main:
                self.on_main(n, entry)

    def mains(self):
        return [q["body"] for q in self.snapshot() if is_main(q)]


def is_main(q):
    """A harness's turn request (side requests, titles, quota probes and
    the like offer no tools)."""
    b = q.get("body")
    if not isinstance(b, dict):
        return False
    if b.get("tools"):
        return True
    return False


def count(token, body):
    return json.dumps(body).count(token)


def snippet(text, token):
    """The line that says where a token arrived: the first line of its
    block that names a hook or a tool, else the block's first line."""
    head = text[:text.find(token)] if token in text else text
    for ln in head.splitlines():
        if "hook" in ln.lower():
            return ln.strip()[:90]
    return text.strip().splitlines()[0][:90] if text.strip() else ""


class HooksCase(harness.NsCase):
    """One namespace, proxy trap and hub (on HUB_PORT) per class; a fresh
    HOME and project per test."""

    client = None         # "claude", "codex", "gemini"
    hub_port = HUB_PORT
    maxDiff = None

    def setUp(self):
        super().setUp()
        self.agent = uid(self.client)
        self.notes = []
        self.twice = []     # what once() found more than once

    def tearDown(self):
        if self.reason:
            return
        name = self.id().rsplit(".", 1)[-1]
        report("== %s %s (agent %s)" % (self.client, name, self.agent),
               *("   " + n for n in self.notes))
        super().tearDown()

    def note(self, text):
        self.notes.append(text)

    # the project
    def project(self):
        """A fresh HOME with the harness's quiet config, and `arc setup`
        run in its project (asserted to exit 0)."""
        home = harness.Home(prefix="arc-hooks-")
        self.addCleanup(home.cleanup)
        self.write_config(home)
        r = harness.run(self.ns, hub_command() + ["setup", self.client, "--agent", self.agent],
                        harness.client_env(home, self.client, self.trap_url), home.project,
                        timeout=30)
        self.assertEqual(r.code, 0, r)
        self.setup_out = r.out
        return home

    def write_config(self, home):
        raise NotImplementedError

    # the hub
    def post(self, body, **fields):
        payload = {"from_agent": fields.pop("from_agent", "alice"), "body": body}
        payload.update(fields)
        status, _, res = self.hub.request("POST", "/v1/messages", body=payload)
        self.assertEqual(status, 201, res)
        return res["result"]

    def dm(self, body, **fields):
        return self.post(body, to_agent=self.agent, **fields)

    def locked_file(self, home):
        """src/locked.txt in the project, holding "original\\n", locked by
        another agent: (that agent, the file's path)."""
        holder = uid("holder")
        rel = "src/locked.txt"
        path = os.path.join(home.project, rel)
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            f.write("original\n")
        status, _, res = self.hub.request("POST", "/v1/locks",
                                          body={"agent_id": holder, "file_path": rel})
        self.assertEqual(status, 201, res)
        return holder, path

    def open_request(self):
        """A task_request to the agent, and the model's script that finds
        nothing to do, then answers it: (a token in its text, the posted
        request, the script)."""
        tok = uid("req")
        req = self.post("please review " + tok, to_agent=self.agent, kind="task_request")
        script = [[{"text": "Nothing to do."}],
                  [{"tool": "arc_task_result", "input": {"task_id": req["id"],
                                                         "body": "reviewed"}}],
                  [{"text": "Answered."}]]
        return tok, req, script

    def presence(self):
        """The agent's state as the hub shows it (PROTOCOL §17.5)."""
        status, _, res = self.hub.request("GET", "/v1/presence?agent_id=%s" % self.agent)
        self.assertEqual(status, 200, res)
        return res["result"][0] if res["result"] else {}

    def owed(self):
        status, _, res = self.hub.request("GET", "/v1/delivery/%s?limit=50" % self.agent)
        self.assertEqual(status, 200, res)
        return res["result"]

    def model(self, script, on_main=None, sequential=False):
        m = Model(script, on_main, sequential).start(bind=self.ns.call)
        self.addCleanup(m.close)
        return m

    def arc_shell(self, *args):
        return " ".join(shlex.quote(a) for a in hub_command() + list(args))

    # what reached the model
    def where(self, token, body):
        """Where token sits in one request: a list of descriptions."""
        raise NotImplementedError

    def once(self, token, what, mains):
        """token reached the model exactly once: in the final request (the
        whole conversation) once, and in no earlier request where it was
        not part of that conversation. Notes where it arrived; returns
        the 1-based index of the first request holding it."""
        self.assertTrue(mains, "no model request")
        first = next((i for i, b in enumerate(mains, 1) if count(token, b)), None)
        places = self.where(token, mains[-1])
        self.note("%s: first in request %s of %d; in the final request %d time(s): %s"
                  % (what, first, len(mains), count(token, mains[-1]), "; ".join(places)))
        self.assertIsNotNone(first, "%s never reached the model" % what)
        if count(token, mains[-1]) != 1:
            self.twice.append("%s reached the model %d times: %s"
                              % (what, count(token, mains[-1]), places))
        return first

    def assertNoneTwice(self):
        self.assertEqual(self.twice, [])

    def check_dm_before_and_during(self, tool, arg, turn):
        """1, 2 for a client whose whole turn is one turn(home, model) call:
        T1 before the turn, T2 and T3 while the shell tool `tool` runs (its
        command in input[arg]); each reaches the model once."""
        home = self.project()
        t = {k: uid("tok%d" % k) for k in (1, 2, 3)}
        self.dm("before the turn " + t[1])

        def on_main(n, _entry):
            if n in (1, 2):
                self.dm("while tool %d runs %s" % (n, t[n + 1]))

        script = [[{"tool": tool, "input": {arg: "echo one"}}],
                  [{"tool": tool, "input": {arg: "echo two"}}],
                  [{"text": "All done."}]]
        m = self.model(script, on_main, sequential=True)
        turn(home, m)
        mains = m.mains()
        self.assertEqual(len(mains), 3, len(mains))
        self.assertEqual(self.once(t[1], "T1 (DM before the turn)", mains), 1)
        self.assertEqual(self.once(t[2], "T2 (DM while %s 1 runs)" % tool, mains), 2)
        self.assertEqual(self.once(t[3], "T3 (DM while %s 2 runs)" % tool, mains), 3)
        self.assertNoneTwice()
        self.assertEqual(self.owed()["owed"], 0)


# ── Claude Code ────────────────────────────────────────────────────────

class ClaudeCase(HooksCase):
    client = "claude"
    needs = ("claude",)

    def write_config(self, home):
        harness.write_claude_config(home, {}, interactive=True)

    def env(self, home, m, extra=None):
        e = {"ANTHROPIC_BASE_URL": m.url, "ANTHROPIC_API_KEY": harness.FAKE_KEY}
        e.update(extra or {})
        return harness.client_env(home, "claude", self.trap_url, e)

    def print_turn(self, home, m, prompt="Do the work.", max_turns=8):
        """claude -p with hook events in its stream; returns (result event,
        [(hook name, exit code, said something)])."""
        argv = [harness.BINS["claude"], "-p", prompt, "--output-format", "stream-json",
                "--verbose", "--include-hook-events", "--model", "claude-sonnet-4-5",
                "--max-turns", str(max_turns), "--dangerously-skip-permissions"]
        r = harness.run(self.ns, argv, self.env(home, m), home.project, timeout=TURN_DEADLINE)
        self.assertIsNotNone(r.code, "timed out:\n%r" % r)
        events = []
        for ln in r.out.splitlines():
            try:
                events.append(json.loads(ln))
            except ValueError:
                pass
        hooks = [(e.get("hook_name"), e.get("exit_code"), bool((e.get("output") or "").strip()))
                 for e in events if e.get("subtype") == "hook_response"]
        results = [e for e in events if e.get("type") == "result"]
        self.assertEqual(r.code, 0, r)
        self.assertEqual(len(results), 1, r)
        self.note("claude -p exit %s after %.1fs; hooks: %s" % (
            r.code, r.secs, ", ".join("%s(exit %s%s)" % (n, c, ", said something" if s else "")
                                      for n, c, s in hooks)))
        return results[0], hooks

    def where(self, token, body):
        names = {}
        out = []
        for i, msg in enumerate(body.get("messages") or []):
            content = msg.get("content")
            blocks = content if isinstance(content, list) else [{"type": "text",
                                                                 "text": content}]
            for blk in blocks:
                if blk.get("type") == "tool_use":
                    names[blk.get("id")] = blk.get("name")
                if token not in json.dumps(blk):
                    continue
                if blk.get("type") == "tool_result":
                    text = json.dumps(blk.get("content"))
                    out.append("message %d, tool_result of %s" % (
                        i, names.get(blk.get("tool_use_id"))))
                    continue
                text = blk.get("text") or json.dumps(blk)
                out.append("message %d (%s %s): %s" % (i, msg.get("role"), blk.get("type"),
                                                       snippet(text, token)))
        return out

    def poll_steps(self):
        """Two model replies that poll the agent's messages from the
        beginning: arc_poll_messages, then `arc poll` through Bash."""
        return [[{"tool": "arc_poll_messages", "input": {"timeout": 0}}],
                [{"tool": "Bash", "input": {
                    "command": self.arc_shell("poll", "--agent", self.agent, "--timeout", "0"),
                    "description": "poll"}}]]

    def tool_result(self, body, tool):
        """The text of the last result of a tool named tool (or ending
        with __tool) in a request."""
        names, res = {}, None
        for msg in body.get("messages") or []:
            content = msg.get("content")
            if not isinstance(content, list):
                continue
            for blk in content:
                if blk.get("type") == "tool_use":
                    names[blk["id"]] = blk["name"]
                elif blk.get("type") == "tool_result":
                    n = names.get(blk.get("tool_use_id"), "")
                    if n == tool or n.endswith("__" + tool):
                        res = blk
        self.assertIsNotNone(res, "no result of %s" % tool)
        return res


@arc_only
class ClaudeHooksTest(ClaudeCase):

    def test_setup_output(self):
        home = self.project()
        with open(os.path.join(home.project, ".claude", "settings.json")) as f:
            hooks = json.load(f)["hooks"]
        self.note("setup: %s" % " | ".join(self.setup_out.strip().splitlines()))
        self.note("events registered: %s" % ", ".join(
            "%s%s" % (ev, "(asyncRewake)" if any(h.get("asyncRewake") for g in groups
                                                 for h in g["hooks"]) else "")
            for ev, groups in hooks.items()))
        for ev in ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop",
                   "SessionEnd"):
            self.assertIn(ev, hooks)

    def test_dm_before_and_during_the_turn_each_once(self):
        """1, 2: T1 before the turn (SessionStart), T2 and T3 while Bash
        runs (PostToolUse); each reaches the model once, where expected."""
        home = self.project()
        t = {k: uid("tok%d" % k) for k in (1, 2, 3)}
        self.dm("before the turn " + t[1])

        states = []

        def on_main(n, _entry):
            # Request n is answered with script[n-1]: what is posted now
            # exists while that reply's tool runs.
            states.append(self.presence())   # after UserPromptSubmit, PostToolUse
            if n in (1, 2):
                self.dm("while tool %d runs %s" % (n, t[n + 1]))

        script = [
            [{"tool": "Bash", "input": {"command": "echo one", "description": "one"}}],
            [{"tool": "Bash", "input": {"command": "echo two", "description": "two"}}],
            [{"text": "All done."}],
        ]
        m = self.model(script, on_main)
        res, hooks = self.print_turn(home, m)
        self.assertEqual((res.get("is_error"), res.get("result")), (False, "All done."), res)
        mains = m.mains()
        self.assertEqual(len(mains), 3, [len(b["messages"]) for b in mains])
        self.assertEqual(self.once(t[1], "T1 (DM before the turn)", mains), 1)
        self.assertIn("SessionStart hook additional context", json.dumps(mains[0]))
        self.assertEqual(self.once(t[2], "T2 (DM while Bash 1 runs)", mains), 2)
        self.assertEqual(self.once(t[3], "T3 (DM while Bash 2 runs)", mains), 3)
        for n in (2, 3):    # after the tool's result, from its PostToolUse
            self.assertIn(t[n], json.dumps(mains[n - 1]["messages"][-1]))
        self.assertNoneTwice()
        self.assertEqual(self.owed()["owed"], 0)
        fired = [n for n, _, _ in hooks]
        self.assertEqual(fired.count("PostToolUse:Bash"), 2, hooks)
        self.assertTrue({"SessionStart:startup", "UserPromptSubmit", "Stop"} <= set(fired),
                        hooks)
        # the hooks said the agent was working throughout its turn, from
        # the claude process (its pid watched)
        self.assertEqual([x.get("state") for x in states], ["working"] * 3, states)
        self.assertTrue(all(x.get("pid") for x in states), states)
        self.note("presence at each model request: %s" % ", ".join(
            "%s (pid %s)" % (x["state"], x["pid"]) for x in states))

    def test_hooks_do_not_repeat_what_a_poll_showed(self):
        """3, one way: T1 posted before arc_poll_messages runs is in its
        result, T2 posted before Bash runs `arc poll` is in its output;
        the PostToolUse after each does not add them again."""
        home = self.project()
        t = {k: uid("tok%d" % k) for k in (1, 2)}

        def on_main(n, _entry):
            if n in (1, 2):
                self.dm("before poll %d %s" % (n, t[n]))

        script = self.poll_steps() + [[{"text": "All done."}]]
        m = self.model(script, on_main)
        res, hooks = self.print_turn(home, m)
        mains = m.mains()
        self.assertEqual(len(mains), 3, [len(b["messages"]) for b in mains])
        self.assertIn(t[1], json.dumps(self.tool_result(mains[1], "arc_poll_messages")))
        self.assertIn(t[2], json.dumps(self.tool_result(mains[2], "Bash")))
        self.once(t[1], "T1 (DM before arc_poll_messages)", mains[:2])
        self.once(t[2], "T2 (DM before Bash arc poll)", mains[2:])
        self.assertNoneTwice()
        self.assertEqual(self.owed()["owed"], 0)

    def test_polls_do_not_repeat_what_a_hook_showed(self):
        """3, the other way: T1 (in the SessionStart context) and T2 (in
        PostToolUse's) do not come back through arc_poll_messages or `arc
        poll` (from the beginning, as it has no --since-id): /v1/events
        with surfaced= leaves out what was surfaced (PROTOCOL §16.4)."""
        home = self.project()
        t = {k: uid("tok%d" % k) for k in (1, 2)}
        self.dm("before the turn " + t[1])

        def on_main(n, _entry):
            if n == 1:
                self.dm("while Bash runs " + t[2])

        script = ([[{"tool": "Bash", "input": {"command": "echo one", "description": "one"}}]]
                  + self.poll_steps() + [[{"text": "All done."}]])
        m = self.model(script, on_main)
        self.print_turn(home, m)
        mains = m.mains()
        self.assertEqual(len(mains), 4, [len(b["messages"]) for b in mains])
        self.once(t[1], "T1 (DM before the turn)", mains)
        self.once(t[2], "T2 (DM while Bash runs)", mains)
        self.assertNoneTwice()

    def test_edit_of_locked_path_denied(self):
        """4: Edit and Write of a file another agent locked are denied with
        the holder's name; the file keeps its bytes."""
        home = self.project()
        holder, path = self.locked_file(home)
        script = [
            [{"tool": "Read", "input": {"file_path": path}}],
            [{"tool": "Edit", "input": {"file_path": path, "old_string": "original",
                                        "new_string": "changed"}}],
            [{"tool": "Write", "input": {"file_path": path, "content": "overwritten\n"}}],
            [{"text": "Could not edit."}],
        ]
        m = self.model(script)
        res, hooks = self.print_turn(home, m)
        mains = m.mains()
        self.assertEqual(len(mains), 4, [len(b["messages"]) for b in mains])
        for n, tool in ((2, "Edit"), (3, "Write")):
            r = self.tool_result(mains[n], tool)
            text = json.dumps(r)
            self.note("%s result: %s" % (tool, text[:200]))
            self.assertIn("locked by agent %s" % holder, text)
        with open(path) as f:
            self.assertEqual(f.read(), "original\n")
        self.assertIn("PreToolUse", {n.split(":")[0] for n, _, _ in hooks})

    def test_open_request_keeps_the_turn_going(self):
        """5: a task_request to the agent: Stop blocks with it as reason;
        the continued turn answers it (arc_task_result); Stop then lets
        the turn end."""
        home = self.project()
        tok, req, script = self.open_request()
        m = self.model(script)
        res, hooks = self.print_turn(home, m)
        self.assertEqual(res.get("result"), "Answered.", res)
        mains = m.mains()
        self.assertEqual(len(mains), 3, [len(b["messages"]) for b in mains])
        cont = json.dumps(mains[1]["messages"][-1])
        self.assertIn("#%d" % req["id"], cont)
        self.note("request 2 (after Stop) ends with: %s"
                  % snippet(json.dumps(mains[1]["messages"][-1]["content"]), "#%d" % req["id"]))
        self.note("where the request's text is in the final request: %s"
                  % "; ".join(self.where(tok, mains[-1])))
        text = self.tool_result(mains[2], "arc_task_result")["content"]
        text = text if isinstance(text, str) else text[0]["text"]
        answer = json.loads(text.split("\n\n<system-reminder>")[0])
        self.assertEqual((answer["kind"], answer["from_agent"], answer["reply_to"]),
                         ("task_result", self.agent, req["id"]))
        stops = [c for n, c, s in hooks if n == "Stop" and s]
        self.note("Stop answers that said something: %d" % len(stops))
        self.assertEqual(self.owed()["requests"], [])


@arc_only
class ClaudeIdleWakeTest(ClaudeCase):
    """6: interactive Claude Code under tmux, idle after its first turn,
    woken by a DM through setup's asyncRewake `wait` hook."""
    needs = ("claude",)
    programs = ("tmux",)

    def test_idle_session_woken_by_dm(self):
        home = self.project()
        tok = uid("wake")
        states = []
        m = self.model([[{"text": "First turn over."}]],
                       lambda n, _e: states.append(self.presence()) if n == 1 else None)
        pane = harness.tmux_claude(self, self.ns, home,
                                   self.env(home, m, {"TERM": "xterm-256color"}),
                                   ["Do the work."])
        first = m.wait_for(lambda reqs: [q for q in reqs if is_main(q)], TURN_DEADLINE)
        self.assertTrue(first, "no first request; pane:\n" + pane())
        # The first turn is over once its reply is on screen (Stop hooks,
        # the wait among them, run right after it).
        deadline = time.monotonic() + TURN_DEADLINE
        while "First turn over." not in pane() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertIn("First turn over.", pane())
        # working in its turn; idle once Stop ran, its claude process watched
        self.assertEqual(states[0].get("state"), "working", states)
        deadline = time.monotonic() + 10
        while self.presence().get("state") != "idle" and time.monotonic() < deadline:
            time.sleep(0.05)
        idle = self.presence()
        self.assertEqual(idle.get("state"), "idle", idle)
        self.assertEqual(idle.get("pid"), states[0].get("pid"), (idle, states))
        self.note("presence: %s in the turn, %s after it (pid %s)" % (
            states[0]["state"], idle["state"], idle["pid"]))
        n_before = len(m.mains())
        t0 = time.monotonic()
        self.dm("wake up " + tok)
        woke = m.wait_for(lambda reqs: len([q for q in reqs if is_main(q)]) > n_before,
                          WAKE_DEADLINE)
        secs = time.monotonic() - t0
        self.assertTrue(woke, "the idle session was not woken within %ds; pane:\n%s"
                        % (WAKE_DEADLINE, pane()))
        mains = m.mains()
        self.assertIn(tok, json.dumps(mains[n_before]["messages"][-1]))
        self.note("woken %.2fs after the DM; request %d ends with: %s" % (
            secs, n_before + 1, "; ".join(self.where(tok, mains[n_before]))))
        self.once(tok, "the wake DM", mains)
        self.assertNoneTwice()
        self.assertEqual(self.owed()["owed"], 0)


# ── Codex ──────────────────────────────────────────────────────────────

@arc_only
class CodexHooksTest(HooksCase):
    """codex exec with the project's .codex/hooks.json from setup. Codex
    runs a project's hooks only once a human trusted them (/hooks); the
    tests pass --dangerously-bypass-hook-trust instead, Codex's switch
    for automation that vetted its hooks."""
    client = "codex"
    needs = ("codex",)

    def write_config(self, home):
        pass                  # needs the model's URL: see run_exec

    def run_exec(self, home, m, prompt="Do the work."):
        harness.write_codex_config(home, {}, m.url)
        argv = [harness.BINS["codex"], "exec", "--json", "--skip-git-repo-check",
                "--dangerously-bypass-hook-trust", prompt]
        r = harness.run(self.ns, argv, harness.client_env(
            home, "codex", self.trap_url, {"FAKE_OPENAI_KEY": harness.FAKE_KEY}),
            home.project, timeout=TURN_DEADLINE)
        self.assertIsNotNone(r.code, "timed out:\n%r" % r)
        self.assertEqual(r.code, 0, r)
        events = [json.loads(ln) for ln in r.out.splitlines() if ln.startswith("{")]
        items = [e["item"] for e in events if e.get("type") == "item.completed"]
        self.note("codex exec exit %s after %.1fs; items: %s" % (
            r.code, r.secs, ", ".join(i.get("type", "?") for i in items)))
        return items

    def where(self, token, body):
        out = []
        for i, it in enumerate(body.get("input") or []):
            if token not in json.dumps(it):
                continue
            if it.get("type") == "message":
                text = " ".join(c.get("text", "") for c in it.get("content") or [])
                out.append("item %d (%s message): %s" % (i, it.get("role"),
                                                        snippet(text, token)))
            else:
                out.append("item %d (%s %s)" % (i, it.get("type"), it.get("name") or
                                                it.get("call_id") or ""))
        return out

    def test_dm_before_and_during_the_turn_each_once(self):
        """1, 2: T1 before the turn (SessionStart), T2 and T3 while
        exec_command runs (PostToolUse); each reaches the model once."""
        self.check_dm_before_and_during("exec_command", "cmd", self.run_exec)

    def test_open_request_keeps_the_turn_going(self):
        """5: Stop blocks with the open request as reason; the continued
        turn answers it; then the turn ends."""
        home = self.project()
        tok, req, script = self.open_request()
        m = self.model(script, sequential=True)
        items = self.run_exec(home, m)
        mains = m.mains()
        self.note("requests: %d; the request's text in the final one: %s"
                  % (len(mains), "; ".join(self.where(tok, mains[-1]))))
        self.assertEqual(len(mains), 3, len(mains))
        self.assertIn("#%d" % req["id"], json.dumps(mains[1]["input"][-1]))
        calls = [i for i in items if i.get("type") == "mcp_tool_call"]
        self.assertEqual([(c["tool"], c["status"]) for c in calls],
                         [("arc_task_result", "completed")], items)
        self.assertEqual(self.owed()["requests"], [])


# ── Gemini CLI ─────────────────────────────────────────────────────────

@arc_only
class GeminiHooksTest(HooksCase):
    """gemini -p with the project's .gemini/settings.json from setup (the
    user settings turn folder trust off, as trusting the folder would)."""
    client = "gemini"
    needs = ("gemini",)

    def write_config(self, home):
        harness.write_gemini_config(home, {})

    def run_p(self, home, m, prompt="Do the work."):
        argv = [harness.BINS["gemini"], "-p", prompt, "--output-format", "json",
                "--model", "gemini-2.5-flash", "--yolo"]
        r = harness.run(self.ns, argv, harness.client_env(
            home, "gemini", self.trap_url, {"GEMINI_API_KEY": harness.FAKE_KEY,
                                            "GOOGLE_GEMINI_BASE_URL": m.url}),
            home.project, timeout=TURN_DEADLINE)
        self.assertIsNotNone(r.code, "timed out:\n%r" % r)
        self.note("gemini -p exit %s after %.1fs" % (r.code, r.secs))
        self.assertEqual(r.code, 0, r)
        return json.loads(r.out)

    def where(self, token, body):
        out = []
        for i, c in enumerate(body.get("contents") or []):
            for part in c.get("parts") or []:
                if token not in json.dumps(part):
                    continue
                if "functionResponse" in part:
                    out.append("content %d, functionResponse of %s"
                               % (i, part["functionResponse"].get("name")))
                else:
                    out.append("content %d (%s text): %s" % (
                        i, c.get("role"), snippet(part.get("text") or json.dumps(part),
                                                  token)))
        return out

    def response(self, body, name):
        for c in reversed(body.get("contents") or []):
            for part in c.get("parts") or []:
                if part.get("functionResponse", {}).get("name") == name:
                    return part["functionResponse"]
        self.fail("no functionResponse of %s" % name)

    def test_dm_before_and_during_the_turn_each_once(self):
        """1, 2: T1 before the turn (SessionStart / BeforeAgent), T2 and T3
        while run_shell_command runs (AfterTool); each reaches the model
        once."""
        self.check_dm_before_and_during("run_shell_command", "command", self.run_p)

    def test_edit_of_locked_path_denied(self):
        """4: write_file and replace of a file another agent locked are
        denied (BeforeTool) with the holder's name; the file is unchanged."""
        home = self.project()
        holder, path = self.locked_file(home)
        script = [[{"tool": "write_file", "input": {"file_path": path,
                                                    "content": "overwritten\n"}}],
                  [{"tool": "replace", "input": {"file_path": path, "old_string": "original",
                                                 "new_string": "changed",
                                                 "instruction": "change it"}}],
                  [{"text": "Could not edit."}]]
        m = self.model(script, sequential=True)
        self.run_p(home, m)
        mains = m.mains()
        self.assertEqual(len(mains), 3, len(mains))
        for n, tool in ((1, "write_file"), (2, "replace")):
            text = json.dumps(self.response(mains[n], tool))
            self.note("%s result: %s" % (tool, text[:200]))
            self.assertIn("locked by agent %s" % holder, text)
        with open(path) as f:
            self.assertEqual(f.read(), "original\n")

    def test_open_request_keeps_the_turn_going(self):
        """5: AfterAgent denies with the open request as reason (Gemini CLI
        retries the turn with it); the retry answers it; then it ends."""
        home = self.project()
        tok, req, script = self.open_request()
        m = self.model(script, sequential=True)
        out = self.run_p(home, m)
        mains = m.mains()
        self.note("requests: %d; response %r; the request's text in the final one: %s"
                  % (len(mains), out.get("response"), "; ".join(self.where(tok, mains[-1]))))
        self.assertEqual(len(mains), 3, len(mains))
        self.assertIn("#%d" % req["id"], json.dumps(mains[1]["contents"][-1]))
        answer = json.dumps(self.response(mains[2], "mcp_arc_arc_task_result"))
        self.assertIn('\\"kind\\":\\"task_result\\"', answer)
        self.assertIn('\\"reply_to\\":%d' % req["id"], answer)
        self.assertEqual(self.owed()["requests"], [])


if __name__ == "__main__":
    unittest.main()
