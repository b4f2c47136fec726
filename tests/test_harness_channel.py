"""Claude Code channels with the real Claude Code (issue 18, "Claude Code
channels"; docs/MCP.md).

An interactive Claude Code (tests/clients, pinned) runs under tmux in the
test's network namespace (tests/harness.py) against tests/fakemodel.py,
with arc as a user-scope MCP server and no hooks, started with
`--dangerously-load-development-channels server:arc` (its confirmation
dialog is accepted) and `--debug-file`, whose lines say how Claude Code
connected to arc and what its channel gate decided:

1. with `arc mcp --channel`, Claude Code connects in the legacy era (the
   server/discover probe is refused, so it falls back to initialize) and
   its channel gate gets past the two checks arc controls, the
   claude/channel capability and the era. Whether it then registers
   depends on Claude Code's own gates (a claude.ai login, the account's
   channels feature, org policy); when it registers, a DM posted while
   the session is idle must start a turn that holds it, exactly once, and
   its receipt says surfaced via channel. When it does not (the fake
   model's API key never passes the account gate), the reason is noted;
2. without --channel, arc declares no capability and Claude Code uses the
   stateless era (no channel path at all).

What happened is appended to tests/out/harness-channel.txt.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_harness_channel -v
"""

import json
import os
import re
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from fakemodel import FakeModel  # noqa: E402
from hubtest import arc_only, uid  # noqa: E402

START_DEADLINE = 90    # seconds for Claude Code to start, connect and answer
WAKE_DEADLINE = 20     # seconds from a DM to the turn it starts
REPORT = os.path.join(harness.OUT, "harness-channel.txt")
GATE = re.compile(r'MCP server "arc": Channel notifications (registered|skipped: .*)')


def report(*lines):
    os.makedirs(harness.OUT, exist_ok=True)
    with open(REPORT, "a") as f:
        f.write("\n".join(lines) + "\n")


def is_main(q):
    b = q.get("body")
    return isinstance(b, dict) and bool(b.get("tools"))


@arc_only
class ClaudeChannelTest(harness.NsCase):
    needs = ("claude",)
    programs = ("tmux",)
    check_trap = False

    def setUp(self):
        super().setUp()
        self.agent = uid("chan")
        self.notes = []

    def tearDown(self):
        if not self.reason:
            report("== claude %s (agent %s)" % (self.id().rsplit(".", 1)[-1], self.agent),
                   *("   " + n for n in self.notes))

    def start(self, channel):
        """Claude Code under tmux with arc (`--channel` or not); returns
        (fake model, pane(), debug log reader) once its first turn is
        over."""
        home = harness.Home(prefix="arc-channel-")
        self.addCleanup(home.cleanup)
        cmd, args = harness.arc_stdio(self.hub, self.agent)
        harness.write_claude_config(
            home, {"arc": {"command": cmd, "args": args + (["--channel"] if channel else [])}},
            interactive=True)
        m = FakeModel([[{"text": "First turn over."}]]).start(bind=self.ns.call)
        self.addCleanup(m.close)
        env = harness.client_env(home, "claude", self.trap_url, {
            "ANTHROPIC_BASE_URL": m.url, "ANTHROPIC_API_KEY": harness.FAKE_KEY,
            "TERM": "xterm-256color"})
        debug = os.path.join(home.root, "debug.txt")
        # the prompt before the channels flag: that flag takes a list
        pane = harness.tmux_claude(self, self.ns, home, env, [
            "--debug-file", debug, "Do the work.",
            "--dangerously-load-development-channels", "server:arc"])

        def log():
            try:
                with open(debug, errors="replace") as f:
                    return f.read()
            except OSError:
                return ""

        deadline = time.monotonic() + START_DEADLINE
        accepted = False
        while "First turn over." not in pane() and time.monotonic() < deadline:
            if not accepted and "I am using this for local development" in pane():
                subprocess.run(["tmux", "-S", sock, "send-keys", "Enter"], timeout=20)
                accepted = True
            time.sleep(0.1)
        self.assertIn("First turn over.", pane())
        self.notes.append("dev-channels dialog %s" % ("accepted" if accepted else "not seen"))
        return m, pane, log

    def era(self, log):
        """The protocolEra Claude Code reports for arc, waited for."""
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            hit = re.search(r'MCP server "arc": Connection established with capabilities: '
                            r'.*"protocolEra":"(\w+)"', log())
            if hit:
                return hit.group(1)
            time.sleep(0.1)
        self.fail("Claude Code never connected to arc:\n" + log()[-3000:])

    def test_channel_mode(self):
        m, pane, log = self.start(channel=True)
        self.assertEqual(self.era(log), "legacy")
        deadline = time.monotonic() + START_DEADLINE
        while not GATE.search(log()) and time.monotonic() < deadline:
            time.sleep(0.1)
        gate = GATE.search(log())
        self.assertIsNotNone(gate, "no channel gate decision for arc:\n" + log()[-3000:])
        verdict = gate.group(1)
        self.notes.append("protocolEra legacy; channel gate: " + verdict)
        # arc's part: the capability is declared and the era has a channel path
        self.assertNotIn("did not declare claude/channel", verdict)
        self.assertNotIn("protocol revision", verdict)
        if verdict != "registered":
            self.notes.append("not registered by Claude Code's own gates: no DM sent "
                              "(a push now would be dropped, already surfaced)")
            return
        tok = uid("chan-dm")
        n_before = len([q for q in m.snapshot() if is_main(q)])
        t0 = time.monotonic()
        status, _, res = self.hub.request("POST", "/v1/messages", body={
            "from_agent": "alice", "to_agent": self.agent, "body": "psst " + tok})
        self.assertEqual(status, 201, res)
        woke = m.wait_for(lambda reqs: [q for q in reqs if is_main(q)][n_before:],
                          WAKE_DEADLINE)
        self.assertTrue(woke, "no turn within %ds of the DM; pane:\n%s"
                        % (WAKE_DEADLINE, pane()))
        last = json.dumps([q for q in m.snapshot() if is_main(q)][-1]["body"])
        self.assertEqual(last.count(tok), 1, last[-2000:])
        self.notes.append("the DM started a turn %.2fs after it was posted"
                          % (time.monotonic() - t0))
        status, _, res = self.hub.request("GET", "/v1/messages/%d/receipts"
                                          % res["result"]["id"])
        self.assertEqual(res["result"]["receipts"][0]["surfaced_via"], "channel")

    def test_plain_mode_is_stateless(self):
        m, pane, log = self.start(channel=False)
        era = self.era(log)
        self.notes.append("protocolEra %s; channel gate: %s" % (
            era, (GATE.search(log()) or [None, "none"])[1]))
        self.assertEqual(era, "modern")


if __name__ == "__main__":
    unittest.main()
