"""`arc mcp` and the hub's /mcp against the official MCP TypeScript SDK clients
(arc-only).

tests/mcp_sdk.mjs runs the scenarios with node. It uses two clients:
- @modelcontextprotocol/sdk 1.32.2 (v1), which speaks the handshake era;
- @modelcontextprotocol/client 2.4.0 (v2), with versionNegotiation 'auto',
  which speaks the stateless 2026-07-28 revision.
Both are pinned in tests/package.json and installed into tests/node_modules
by tests/setup-browser.sh, which `make test` runs. Each test starts one
scenario against this class's hub and asserts that it passed. A scenario
fails on an assertion, on any SDK error, and on any error a client reports
through onerror (for instance, a stdout line it cannot parse).

When node or the packages are missing, the tests skip and say why.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_mcp_sdk -v
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hubtest  # noqa: E402
from hubtest import KEEP, HubCase, arc_only, hub_command  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "mcp_sdk.mjs")
PACKAGES = ("@modelcontextprotocol/sdk", "@modelcontextprotocol/client")
SCENARIO_DEADLINE = 120  # seconds for one scenario (the script has its own watchdog too)


def missing():
    """Why the SDK tests cannot run, or None."""
    if not shutil.which("node"):
        return "node is not installed"
    for pkg in PACKAGES:
        if not os.path.exists(os.path.join(HERE, "node_modules", pkg, "package.json")):
            return ("tests/node_modules/%s is missing (tests/setup-browser.sh installs "
                    "tests/package.json with npm ci)" % pkg)
    return None


@arc_only
class McpSdkTest(HubCase):
    transport = None     # ARC_MCP_TRANSPORT for mcp_sdk.mjs: None = `arc mcp` on stdio

    @classmethod
    def setUpClass(cls):
        # Skipped test by test (not the class), so each one is counted.
        cls.reason = missing()
        if cls.reason is None:
            super().setUpClass()

    def setUp(self):
        if self.reason:
            self.skipTest(self.reason)

    def scenario(self, name):
        work = tempfile.mkdtemp(prefix="arc-mcp-sdk-")
        if not KEEP:
            self.addCleanup(shutil.rmtree, work, True)
        log = os.path.join(work, "mcp-stderr.log")
        env = {k: v for k, v in os.environ.items()
               if k not in ("ARC_URL", "ARC_AGENT", "ARC_RELAY_DIR")}
        env.update(ARC_CMD=json.dumps(hub_command()), ARC_HUB_URL=self.hub.url,
                   ARC_MCP_LOG=log, ARC_MCP_CWD=work)
        if self.transport:
            env["ARC_MCP_TRANSPORT"] = self.transport
        t0 = time.monotonic()
        try:
            proc = subprocess.run(["node", SCRIPT, name], env=env, cwd=HERE,
                                  capture_output=True, text=True, timeout=SCENARIO_DEADLINE)
        except subprocess.TimeoutExpired as e:
            self.fail("scenario %s did not finish within %ds:\n%s\n%s"
                      % (name, SCENARIO_DEADLINE, e.stdout, e.stderr))
        took = time.monotonic() - t0
        try:
            with open(log, "rb") as f:
                server_log = f.read().decode("utf-8", errors="replace")
        except OSError:
            server_log = ""
        hubtest.check_sanitizer_log(server_log)
        print("\n    %s: %.1f s" % (name, took))
        detail = ("scenario %s exited %d\n--- stdout\n%s\n--- stderr\n%s\n"
                  "--- arc mcp stderr (tail)\n%s"
                  % (name, proc.returncode, proc.stdout[-4000:], proc.stderr[-6000:],
                     server_log[-3000:]))
        self.assertEqual(proc.returncode, 0, detail)
        self.assertIn("PASS %s" % name, proc.stdout, detail)
        return proc.stdout

    def test_v1_handshake(self):
        """v1 client: initialize negotiates 2025-11-25; serverInfo, the tools
        capability, instructions, ping; tools/list gives the 15 tools, each
        with a title, a description, input and output schemas that compile
        (Ajv), and annotations with the right readOnlyHint."""
        self.scenario("v1-handshake")

    def test_v1_every_tool(self):
        """v1 client: every tool called against a live hub, with the SDK
        checking structuredContent against each outputSchema. A peer agent
        on HTTP plays the other side: posts, polls, DMs, inbox, thread,
        claims and locks (granted, refreshed, released, and denied), tasks
        (listed and completed), answering a task_request, an arc_rpc_call
        answered by the peer, and hub errors as isError results."""
        self.scenario("v1-tools")

    def test_v1_two_agents(self):
        """Two MCP servers for agents A and B (v1 clients): DMs both ways,
        then A's arc_rpc_call is answered by B through arc_poll_messages and
        arc_task_result."""
        self.scenario("v1-two-agents")

    def test_v2_stateless_era(self):
        """v2 client with versionNegotiation 'auto': it negotiates 2026-07-28
        (era modern) through server/discover without initialize; every
        request carries the _meta envelope and every result has resultType;
        tools/list and tool calls work, hub errors are isError."""
        self.scenario("v2-modern")

    def test_v1_progress(self):
        """v1 client: a waiting arc_poll_messages with onprogress gets
        notifications/progress carrying its token; a message posted after
        the first one ends the wait with that message."""
        self.scenario("v1-progress")

    def test_v2_progress(self):
        """The same as test_v1_progress with the v2 client in the 2026-07-28
        era, asking for a 999 s wait: the progress total shows it cut to 50 s."""
        self.scenario("v2-progress")

    def test_v1_cancel(self):
        """v1 client: aborting a waiting poll (AbortSignal) sends
        notifications/cancelled, the call rejects, no answer for it ever
        arrives, and ping, tool calls and a new poll still work."""
        self.scenario("v1-cancel")

    def test_v2_cancel(self):
        """The same as test_v1_cancel with the v2 client in the 2026-07-28 era."""
        self.scenario("v2-cancel")


@arc_only
class McpSdkHttpTest(McpSdkTest):
    """The same scenarios with the SDKs' Streamable HTTP clients talking to
    the hub's /mcp directly (X-Arc-Agent names the agent), no `arc mcp`:
    sessions (v1), the stateless era (v2), SSE progress, cancellation."""
    transport = "http"


if __name__ == "__main__":
    unittest.main()
