"""The smoke agents: `arc smoke` and `arc smoke-agent` roles in mixed
transports against a real hub (arc-only: the binary's own subcommands), and
the reference's own smoke agents against it when the reference is here.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_smoke -v
"""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hubtest  # noqa: E402
from hubtest import Hub, arc_only, hub_command, reference_py, uid  # noqa: E402


class SmokeCase(unittest.TestCase):
    """A hub for the class, and smoke roles run against it by cmd()."""

    @classmethod
    def setUpClass(cls):
        cls.hub = Hub()
        cls.hub.start()
        cls.spool = os.path.join(cls.hub.dir, "spool")

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()

    def role(self, role, transport, thread, timeout=30, extra=()):
        argv = self.cmd() + ["smoke-agent", "--role", role, "--transport", transport,
                             "--base-url", self.hub.url, "--relay-dir", self.spool,
                             "--thread-id", thread, "--claim-key", thread + "-k",
                             "--timeout-sec", str(timeout), "--poll-interval-sec", "0.2"]
        return subprocess.Popen(argv + list(extra), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=self.hub.dir)

    def cmd(self):
        c = hub_command()
        return shlex.split(c) if isinstance(c, str) else list(c)

    def run_mix(self, transports):
        thread = uid("mix")
        procs = [self.role("smoke-" + r, t, thread) for r, t in zip("abc", transports)]
        outs = [p.communicate(timeout=60) for p in procs]
        for p, (out, err) in zip(procs, outs):
            self.assertEqual(p.returncode, 0, (transports, out, err))


@arc_only
class SmokeAgentTests(SmokeCase):

    def test_mixed_transports(self):
        for transports in (("http", "relay", "http"), ("relay", "http", "relay"),
                           ("http", "http", "http"), ("relay", "relay", "relay")):
            with self.subTest(transports=transports):
                self.run_mix(transports)

    def test_role_alone_times_out_with_the_step(self):
        p = self.role("smoke-c", "http", uid("alone"), timeout=1)
        out, _ = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"Smoke test failed: timed out waiting for task and artifact", out)

    def test_claim_held_by_another_is_reported(self):
        thread = uid("held")
        status, _, _ = self.hub.post("/v1/claims", {"claim_key": thread + "-k",
                                                    "owner_agent_id": "squatter"})
        self.assertEqual(status, 201)
        a = self.role("smoke-a", "http", thread, timeout=3)
        b = self.role("smoke-b", "relay", thread, timeout=3)
        out, _ = b.communicate(timeout=30)
        a.communicate(timeout=30)
        self.assertEqual(b.returncode, 1)
        self.assertIn(b"claim denied to smoke-b", out)

    def test_bad_role_is_usage_error(self):
        p = subprocess.run(self.cmd() + ["smoke-agent", "--role", "smoke-z",
                                         "--transport", "http"], capture_output=True)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"--role", p.stderr)

    def test_arc_smoke(self):
        argv = self.cmd() + ["smoke", "--port", str(self.hub.port), "--storage",
                             self.hub.storage, "--spool-dir", self.spool]
        p = subprocess.run(argv, capture_output=True, cwd=self.hub.dir, timeout=60)
        out = p.stdout.decode()
        self.assertEqual(p.returncode, 0, (out, p.stderr))
        lines = out.strip().splitlines()
        self.assertRegex(lines[-1], r"^smoke: ok in \d+ ms$")
        for step in ("smoke-a: post task ok", "smoke-b: acquire claim ok",
                     "smoke-b: post artifact ok", "smoke-c: post verifier notice ok",
                     "smoke-a: post final notice ok"):
            self.assertIn(step, lines)
        # smoke-b really went through the relay
        self.assertTrue(os.path.isdir(os.path.join(self.spool, "responses", "smoke-b")))


@arc_only
class SmokeSpoolTests(SmokeCase):
    """`arc smoke` against a running hub finds that hub's spool directory
    (hub-info's spool_path) instead of assuming ./.arc-relay, and its
    --timeout-sec bounds the whole run, the relay role included."""

    def smoke(self, extra, timeout_sec, cwd):
        argv = self.cmd() + ["smoke", "--port", str(self.hub.port), "--storage",
                             self.hub.storage, "--timeout-sec", str(timeout_sec)]
        t0 = time.monotonic()
        p = subprocess.run(argv + list(extra), capture_output=True, cwd=cwd, timeout=90)
        hubtest.check_sanitizer_log(p.stderr.decode(errors="replace"))
        return p, time.monotonic() - t0

    def test_hub_info_reports_the_spool_it_serves(self):
        info = self.hub.get("/v1/hub-info")[2]["result"]
        self.assertEqual(info["spool_path"], os.path.realpath(self.spool))

    def test_smoke_uses_the_running_hubs_spool(self):
        cwd = tempfile.mkdtemp(prefix="arc-smoke-cwd-")
        self.addCleanup(shutil.rmtree, cwd, True)
        p, _ = self.smoke((), 20, cwd)
        out = p.stdout.decode()
        self.assertEqual(p.returncode, 0, (out, p.stderr))
        self.assertRegex(out.strip().splitlines()[-1], r"^smoke: ok in \d+ ms$")
        self.assertFalse(os.path.exists(os.path.join(cwd, ".arc-relay")))
        self.assertTrue(os.path.isdir(os.path.join(self.spool, "responses", "smoke-b")))

    def test_timeout_bounds_an_unserved_relay(self):
        cwd = tempfile.mkdtemp(prefix="arc-smoke-cwd-")
        self.addCleanup(shutil.rmtree, cwd, True)
        unserved = os.path.join(cwd, "nobody-serves-this")
        p, elapsed = self.smoke(("--spool-dir", unserved), 2, cwd)
        out = p.stdout.decode()
        self.assertEqual(p.returncode, 1, (out, p.stderr))
        self.assertLess(elapsed, 2 + 6, out)     # the timeout, plus start-up slack
        lines = out.strip().splitlines()
        self.assertTrue(any(l.startswith("smoke-b: FAILED:") and unserved in l
                            for l in lines), out)
        self.assertEqual(lines[-1], "smoke: FAILED: timed out after 2 s (--timeout-sec)")


@arc_only
class ReferenceSmokeAgentTests(SmokeCase):
    """The reference's own smoke agents (its ArcClient over HTTP, its
    FileRelayClient over the spool) against this hub, unchanged. Skipped
    when the reference is not here (set ARC_REF_PY)."""

    @classmethod
    def setUpClass(cls):
        if not reference_py():
            raise unittest.SkipTest("the reference's arc.py is not here (set ARC_REF_PY)")
        super().setUpClass()

    def cmd(self):
        return [sys.executable, reference_py()]

    def test_mixed_transports(self):
        for transports in (("http", "relay", "http"), ("relay", "relay", "relay")):
            with self.subTest(transports=transports):
                self.run_mix(transports)


if __name__ == "__main__":
    unittest.main()
