"""The official MCP conformance suite against the hub's MCP over HTTP.

npm @modelcontextprotocol/conformance 0.2.0-alpha.12 (the newest 0.2; its
requirement sets start there) needs Node 22: both are pinned in
tests/node22/package.json and installed by tests/setup-clients.sh, which
make test runs. Server testing is HTTP only, so the tests skip until the
hub advertises MCP over HTTP in GET /v1/hub-info (a `mcp_path`, or a
feature token containing "mcp").

For each requirement set (2025-11-25, 2026-07-28) one test runs, inside a
loopback-only network namespace with the hub (tests/harness.py):
  node22 conformance server --url URL --requirements REV -o DIR --timeout MS
reads DIR/server-SCENARIO-TIMESTAMP/checks.json, and fails on every
FAILURE check of a scenario the set scores (`conformance list --server
--requirements REV`) that tests/conformance-expected-failures.txt does not
list. Listed entries that pass are reported as stale (not failed). The
per-scenario results go to tests/out/conformance-REV.txt. Scenarios the set
runs but does not score (extensions, pending) are reported only.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_conformance -v
"""

import json
import os
import re
import sys
import shutil
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from hubtest import KEEP, arc_only  # noqa: E402
from test_harness_mcp import hub_mcp_path  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EXPECTED = os.path.join(HERE, "conformance-expected-failures.txt")
OUT = os.path.join(HERE, "out")
SETS = ("2025-11-25", "2026-07-28")
SCENARIO_MS = 15000     # per-scenario timeout the runner enforces
RUN_DEADLINE = 300      # seconds for one requirement set (about 4 s today)
# The agent the runner acts as: it cannot send headers of its own, so the
# identity goes in the URL (issue 17: X-Arc-Agent header or ?agent=).
AGENT_QUERY = "?agent=conformance"


def read_expected(path=EXPECTED):
    """[(set, scenario, check_id or None, reason, line_no)] from the file."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 2)
            if len(parts) < 3 or (parts[0] != "*" and parts[0] not in SETS):
                raise ValueError("%s:%d: want SET SCENARIO[:CHECK] REASON: %r"
                                 % (path, n, line))
            scen, _, check = parts[1].partition(":")
            out.append((parts[0], scen, check or None, parts[2], n))
    return out


def list_scenarios(ns, home, rev):
    """(scored, not_scored) server scenario names of a requirement set."""
    r = harness.run(ns, harness.node22_argv(harness.CONFORMANCE, "list", "--server",
                                            "--requirements", rev),
                    harness.client_env(home, "inspector"), home.project, timeout=60)
    if r.code != 0:
        raise AssertionError("conformance list failed:\n%r" % r)
    scored, not_scored, section = [], [], None
    for line in r.out.splitlines():
        if line.startswith("Server scenarios"):
            section = "scored"
        elif line.startswith("Client scenarios"):
            section = None
        elif line.startswith("Run and reported"):
            section = "not_scored"
        m = re.match(r"^\s+- (\S+)(?: \[(\w+)\])?$", line)
        if m and section == "scored":
            scored.append(m.group(1))
        elif m and section == "not_scored" and m.group(2) == "server":
            not_scored.append(m.group(1))
    return scored, not_scored


def read_results(out_dir):
    """{scenario: [check, ...]} from the runner's output directory."""
    res = {}
    for d in sorted(os.listdir(out_dir)):
        m = re.match(r"^server-(.+)-\d{4}-\d\d-\d\dT[\d-]+Z$", d)
        path = os.path.join(out_dir, d, "checks.json")
        if m and os.path.exists(path):
            with open(path) as f:
                res[m.group(1)] = json.load(f)
    return res


@arc_only
class ConformanceTest(harness.NsCase):
    needs = ("conformance",)
    trap = False          # the runner runs without proxy settings
    check_trap = False
    maxDiff = None

    def setUp(self):
        super().setUp()
        self.home = harness.Home("arc-conformance-")
        self.addCleanup(self.home.cleanup)

    def test_expected_failures_name_real_scenarios(self):
        """Every entry of the expected-failures file names a server scenario
        its requirement set runs (runs without /mcp)."""
        entries = read_expected()
        known = {}
        for rev in SETS:
            scored, not_scored = list_scenarios(self.ns, self.home, rev)
            self.assertIn("tools-list", scored)
            known[rev] = set(scored) | set(not_scored)
        for rev, scen, _check, _reason, n in entries:
            for r in SETS if rev == "*" else (rev,):
                self.assertIn(scen, known[r], "%s line %d: %s is not a %s server scenario"
                              % (EXPECTED, n, scen, r))

    def run_set(self, rev):
        path = hub_mcp_path(self.hub)
        if not path:
            self.skipTest("the hub does not advertise MCP over HTTP in /v1/hub-info "
                          "(no mcp_path, no feature token with 'mcp')")
        url = self.hub.url + path + AGENT_QUERY
        scored, not_scored = list_scenarios(self.ns, self.home, rev)
        out_dir = os.path.join(self.home.root, "results")
        r = harness.run(self.ns, harness.node22_argv(
            harness.CONFORMANCE, "server", "--url", url, "--requirements", rev,
            "-o", out_dir, "--timeout", str(SCENARIO_MS)),
            harness.client_env(self.home, "inspector"), self.home.project,
            timeout=RUN_DEADLINE)
        self.assertIsNotNone(r.code, "conformance run timed out:\n%r" % r)
        results = read_results(out_dir) if os.path.isdir(out_dir) else {}
        os.makedirs(OUT, exist_ok=True)
        if KEEP:
            shutil.copytree(out_dir, os.path.join(OUT, "conformance-" + rev),
                            dirs_exist_ok=True)

        entries = [e for e in read_expected() if e[0] in ("*", rev)]
        whole = {e[1] for e in entries if not e[2]}
        checks = {(e[1], e[2]) for e in entries if e[2]}
        unexpected, expected, stale, report = [], [], [], []
        for scen in scored + not_scored:
            got = results.get(scen)
            tag = "" if scen in scored else " (not scored)"
            if got is None:
                report.append("?  %s%s: no results" % (scen, tag))
                if scen in scored and scen not in whole:
                    unexpected.append("%s: did not run" % scen)
                continue
            failed = [c for c in got if c.get("status") == "FAILURE"]
            passed = [c for c in got if c.get("status") == "SUCCESS"]
            warned = [c for c in got if c.get("status") == "WARNING"]
            report.append("%s %s%s: %d passed, %d failed%s" % (
                "x " if failed else "ok", scen, tag, len(passed), len(failed),
                ", %d warnings" % len(warned) if warned else ""))
            for c in failed:
                report.append("     %s: %s" % (c.get("id"), (c.get("errorMessage") or "")[:300]))
            if scen not in scored:
                continue
            if scen in whole:
                (expected if failed else stale).append(scen)
                continue
            for c in failed:
                key = "%s:%s" % (scen, c.get("id"))
                if (scen, c.get("id")) in checks:
                    expected.append(key)
                else:
                    unexpected.append("%s  %s" % (key, (c.get("errorMessage") or "")[:200]))
            for s, cid in checks:
                if s == scen and any(c.get("id") == cid and c.get("status") == "SUCCESS"
                                     for c in got):
                    stale.append("%s:%s" % (s, cid))
        summary = ("conformance %s against %s: %d scored scenarios, %d unexpected "
                   "failures, %d expected, %d stale entries"
                   % (rev, path, len(scored), len(unexpected), len(expected), len(stale)))
        with open(os.path.join(OUT, "conformance-%s.txt" % rev), "w") as f:
            f.write(summary + "\n\n" + "\n".join(report) + "\n")
            if stale:
                f.write("\nstale expected-failure entries (now passing):\n  "
                        + "\n  ".join(stale) + "\n")
        sys.stderr.write("\n%s (tests/out/conformance-%s.txt)\n" % (summary, rev))
        if stale:
            sys.stderr.write("stale entries in %s: %s\n" % (EXPECTED, ", ".join(stale)))
        self.assertEqual(unexpected, [], "%s\nrunner exit %s; add a line per expected "
                         "failure to %s\n%s\n--- runner output (tail)\n%s"
                         % (summary, r.code, EXPECTED, "\n".join(report), r.out[-3000:]))

    def test_requirements_2025_11_25(self):
        self.run_set("2025-11-25")

    def test_requirements_2026_07_28(self):
        self.run_set("2026-07-28")


if __name__ == "__main__":
    unittest.main()
