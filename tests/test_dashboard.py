"""The live dashboard (GET /) in a real headless Chromium (arc-only).

tests/dashboard.spec.mjs drives the page with the npm package playwright-core
against /usr/bin/chromium; this file starts the hub, runs that script with
node, and restarts the hub on the same port when the script asks for it.
tests/security.spec.mjs has pages of other origins (and a DNS-rebinding
page) attack a hub, and uses the dashboard of a hub that requires a token.
When chromium or playwright-core is missing, tests/setup-browser.sh is run
once to install it (set ARC_NO_BROWSER_INSTALL=1 to forbid that); the test
skips, saying why, only when they still cannot be had.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_dashboard -v
Screenshots: tests/out/dashboard.png (1280 px), dashboard-360*.png (360 px).
"""

import os
import shutil
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hubtest  # noqa: E402
from hubtest import Hub, arc_only  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DASH = os.path.join(HERE, "..", "dash")      # the page's source and generator
OUT = os.path.join(HERE, "out")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT = os.path.join(HERE, "node_modules", "playwright-core", "package.json")
SPEC = os.path.join(HERE, "dashboard.spec.mjs")
SECURITY_SPEC = os.path.join(HERE, "security.spec.mjs")
SPEC_DEADLINE = 300  # seconds for the whole browser script


def run_spec(spec, env, commands):
    """Run a playwright script with node; `commands` maps a line it prints
    ("@@restart") to a function returning the line to answer. Returns
    (exit status, output)."""
    proc = subprocess.Popen(["node", spec], cwd=HERE, env=dict(os.environ, **env),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    timer = threading.Timer(SPEC_DEADLINE, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.strip() in commands:
                proc.stdin.write(commands[line.strip()]() + "\n")
                proc.stdin.flush()
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    return rc, "\n".join(lines)


def missing():
    """Why the browser test cannot run, or None."""
    if not shutil.which("node"):
        return "node is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return "%s is missing (tests/setup-browser.sh installs it with apt-get)" % CHROMIUM
    if not os.path.exists(PLAYWRIGHT):
        return ("tests/node_modules/playwright-core is missing "
                "(tests/setup-browser.sh installs it with npm)")
    return None


def ensure_browser():
    """None when the test can run, else the reason, after one install try."""
    reason = missing()
    if reason is None or os.environ.get("ARC_NO_BROWSER_INSTALL") == "1":
        return reason
    subprocess.run(["sh", os.path.join(HERE, "setup-browser.sh")],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    reason = missing()
    return reason and reason + "; tests/setup-browser.sh could not install it"


@arc_only
class DashboardPageTest(hubtest.HubCase):
    """The page as served, without a browser."""

    def test_served_self_contained(self):
        status, headers, page = self.hub.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("content-type"), "text/html; charset=utf-8")
        self.assertIn("default-src 'self'", headers.get("content-security-policy", ""))
        self.assertEqual(headers.get("x-content-type-options"), "nosniff")
        self.assertIn("new EventSource('/v1/stream?", page)
        # Nothing from elsewhere, and no HTML parsing of strings at run time.
        for bad in ("http://", "https://", "src='//", "href='//", "@import",
                    "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                    "eval(", "new Function"):
            self.assertNotIn(bad, page)

    def test_source_in_sync(self):
        """arc.c's dash_html is what dash/gen_dash.py makes of dash/dash.html
        (`make dash` regenerates it)."""
        src = os.path.join(DASH, "dash.html")
        if not os.path.exists(src):
            self.skipTest("dash/dash.html (the page's HTML source) is not in the tree")
        gen = subprocess.run([sys.executable, os.path.join(DASH, "gen_dash.py"), src,
                              "--check", os.path.join(HERE, "..", "arc.c")],
                             capture_output=True, text=True)
        self.assertEqual(gen.returncode, 0, gen.stderr + "(run `make dash`)")


@arc_only
class DashboardBrowserTest(unittest.TestCase):
    def test_dashboard_in_chromium(self):
        reason = ensure_browser()
        if reason:
            self.skipTest(reason)
        os.makedirs(OUT, exist_ok=True)
        hub = Hub().start()
        self.addCleanup(hub.stop)
        rc, log = run_spec(SPEC, dict(ARC_URL=hub.url, OUT_DIR=OUT, CHROMIUM=CHROMIUM),
                           {"@@restart": lambda: hub.restart(same_port=True) and "restarted"})
        with open(os.path.join(OUT, "dashboard.log"), "w") as f:
            f.write(log + "\n")
        self.assertEqual(rc, 0, "dashboard.spec.mjs failed (exit %s):\n%s\nhub log:\n%s"
                         % (rc, log, hub.log_text()[-3000:]))
        self.assertIn("dashboard: all checks passed", log)
        self.assertTrue(os.path.getsize(os.path.join(OUT, "dashboard.png")) > 10000)


@arc_only
class SecurityBrowserTest(unittest.TestCase):
    """Pages of other origins cannot post to the hub (a cross-site and a
    same-site page, a DNS-rebinding page); a hub in network mode with a token
    works from the dashboard (PROTOCOL.md §2)."""

    def test_security_in_chromium(self):
        reason = ensure_browser()
        if reason:
            self.skipTest(reason)
        os.makedirs(OUT, exist_ok=True)
        plain = Hub().start()
        self.addCleanup(plain.stop)
        token = "dash-" + os.urandom(16).hex()
        net = Hub(token=token).start(["--host", "0.0.0.0", "--allow-remote"])
        self.addCleanup(net.stop)
        env = dict(ARC_URL=plain.url, TOKEN_URL=net.url, TOKEN=token, OUT_DIR=OUT,
                   CHROMIUM=CHROMIUM)
        rc, log = run_spec(SECURITY_SPEC, env, {
            "@@stop": lambda: plain.stop_process() or "stopped",
            "@@start": lambda: plain.restart(same_port=True) and "started"})
        with open(os.path.join(OUT, "security.log"), "w") as f:
            f.write(log + "\n")
        self.assertEqual(rc, 0, "security.spec.mjs failed (exit %s):\n%s\nhub logs:\n%s\n%s"
                         % (rc, log, plain.log_text()[-2000:], net.log_text()[-2000:]))
        self.assertIn("security: all checks passed", log)
        for name in ("xsite", "samesite"):
            self.assertIn("ok - %s: fetch (no-cors, text/plain), beacon and form post "
                          "answered 403" % name, log)
        self.assertIn("ok - rebinding page", log)
        self.assertIn("ok - right token: live", log)


if __name__ == "__main__":
    unittest.main()
