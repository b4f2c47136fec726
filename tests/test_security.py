"""Security (PROTOCOL.md §2): the Host allowlist against DNS rebinding,
refusal of other origins' requests, bearer tokens on every transport (HTTP,
event stream, CLI, smoke agents, standalone relay; the hub's own file relay
needs none), file modes, network-mode binding, and the reference's client
still working on loopback. arc-only: the reference has none of this.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_security -v
The browser side (a page of another origin posting to the hub, and the
dashboard with a token) is in test_dashboard.py / security.spec.mjs.
ARC_REF_PY may name the reference's arc.py for ReferenceClientTests; without
it /tmp/ref/arc.py is tried, and the test skips when neither exists.
"""

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hubtest import (KEEP, HTTPReader, Hub, HubCase, arc_only, connect, free_port,  # noqa: E402
                     hub_command, qs, reference_py, uid, wait_for)
from test_realtime import SSE  # noqa: E402

TOKEN = "t0ken-" + "5f3a9c" * 6     # what the token hubs require


def raw_req(method, path, headers=(), body=None, version="HTTP/1.1"):
    """A raw request with exactly the given headers (no Host unless given)."""
    lines = ["%s %s %s" % (method, path, version)]
    lines += ["%s: %s" % kv for kv in headers]
    if body is not None:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def no_cors(test, resp_headers):
    """No response may carry a CORS grant."""
    names = [k.lower() for k in resp_headers]
    test.assertEqual([n for n in names if n.startswith("access-control-")], [])


class SecCase(HubCase):
    """Helpers: one raw request, and a JSON error check."""

    def send(self, method, path, headers=(), body=None, version="HTTP/1.1"):
        resp = self.hub.raw(raw_req(method, path, headers, body, version))
        self.assertIsNotNone(resp, "no response")
        no_cors(self, resp.headers)
        return resp

    def refused(self, resp, status, text=None):
        self.assertEqual(resp.status, status, resp)
        payload = resp.json()
        self.assertIs(payload["ok"], False)
        self.assertIn("x-arc-instance", resp.headers)
        if text:
            self.assertIn(text, payload["error"])
        return payload["error"]

    def host(self):
        return "127.0.0.1:%d" % self.hub.port

    def stored(self, body, channel="general"):
        """Messages in channel with this body (read with a proper client)."""
        _, _, payload = self.hub.get("/v1/messages", channel=channel, tail=1, limit=500)
        return [m for m in payload["result"] if m["body"] == body]


@arc_only
class HostTests(SecCase):
    """Host must name an IP address, localhost or an --allowed-host name."""

    hub_args = ("--allowed-host", "arc.lan")

    def test_allowed_hosts(self):
        port = self.hub.port
        for host in ("127.0.0.1:%d" % port, "127.0.0.1", "localhost:%d" % port, "LOCALHOST",
                     "[::1]:%d" % port, "192.168.7.9", "arc.lan", "Arc.Lan:%d" % port):
            with self.subTest(host=host):
                resp = self.send("GET", "/v1/channels", [("Host", host)])
                self.assertEqual(resp.status, 200, resp)

    def test_other_names_refused(self):
        port = self.hub.port
        for host in ("evil.example:%d" % port, "evil.example", "127.0.0.1.nip.io",
                     "localhost.evil.example", "arc.lan.evil.example", "0x7f000001"):
            for method, path in (("GET", "/v1/channels"), ("GET", "/"),
                                 ("POST", "/v1/channels"), ("DELETE", "/v1/sessions/x")):
                with self.subTest(host=host, path=path):
                    resp = self.send(method, path, [("Host", host)], b"{}" if method == "POST"
                                     else None)
                    err = self.refused(resp, 403, "Host not allowed")
                    self.assertIn("--allowed-host", err)

    def test_rebinding_page_cannot_post_or_read(self):
        """A same-origin request from a page on a rebound name: Origin equals
        Host, so only the Host check stands in the way."""
        host = "rebind.example:%d" % self.hub.port
        body = uid("rebound")
        resp = self.send("POST", "/v1/messages", [("Host", host), ("Origin", "http://" + host),
                                                  ("Sec-Fetch-Site", "same-origin"),
                                                  ("Content-Type", "text/plain")],
                         json.dumps({"from_agent": "evil", "body": body}).encode())
        self.refused(resp, 403, "Host not allowed: rebind.example")
        self.assertEqual(self.stored(body), [])
        resp = self.send("GET", "/v1/messages?channel=general", [("Host", host)])
        self.refused(resp, 403)
        self.assertNotIn(b"result", resp.body)

    def test_missing_multiple_and_malformed_host(self):
        self.refused(self.send("GET", "/v1/channels"), 400, "missing Host header")
        self.refused(self.send("GET", "/v1/channels", [("Host", "127.0.0.1"),
                                                       ("Host", "127.0.0.1")]),
                     400, "multiple Host headers")
        for host in ("", "a b", "[::1", "::1", "host:1:2", "host:port", "u@h", "[evil]"):
            with self.subTest(host=host):
                self.refused(self.send("GET", "/v1/channels", [("Host", host)]), 400,
                             "invalid Host header")
        # HTTP/1.0 does not require Host (RFC 9112 §3.2 is for 1.1).
        resp = self.send("GET", "/v1/channels", version="HTTP/1.0")
        self.assertEqual(resp.status, 200)

    def test_refusal_keeps_the_connection(self):
        sock = connect(self.hub.port)
        try:
            reader = HTTPReader(sock)
            sock.sendall(raw_req("GET", "/v1/channels", [("Host", "evil.example")]))
            self.refused(reader.read_response(), 403)
            sock.sendall(raw_req("GET", "/v1/channels", [("Host", self.host())]))
            self.assertEqual(reader.read_response().status, 200)
        finally:
            sock.close()


@arc_only
class OriginTests(SecCase):
    """Requests that say they come from a page of another origin are refused,
    except GET / (the page itself, which holds no data)."""

    def post_message(self, headers, ctype="application/json"):
        body = uid("xo")
        data = json.dumps({"from_agent": "web", "body": body}).encode()
        resp = self.send("POST", "/v1/messages",
                         [("Host", self.host()), ("Content-Type", ctype)] + list(headers), data)
        return resp, body

    def test_foreign_origin_post_refused(self):
        for origin in ("http://evil.example", "null", "http://127.0.0.1:%d" % (self.hub.port + 1),
                       "http://localhost:%d" % self.hub.port, "https://evil.example",
                       "file://"):
            for ctype in ("application/json", "text/plain",
                          "application/x-www-form-urlencoded"):
                with self.subTest(origin=origin, ctype=ctype):
                    resp, body = self.post_message([("Origin", origin)], ctype)
                    self.refused(resp, 403, "cross-origin request refused (Origin: ")
                    self.assertEqual(self.stored(body), [])

    def test_sec_fetch_site(self):
        for site in ("cross-site", "same-site", "Cross-Site", "unknown-value"):
            with self.subTest(site=site):
                resp, body = self.post_message([("Sec-Fetch-Site", site)], "text/plain")
                self.refused(resp, 403, "Sec-Fetch-Site")
                self.assertEqual(self.stored(body), [])
        for site in ("same-origin", "none"):
            with self.subTest(site=site):
                resp, body = self.post_message([("Sec-Fetch-Site", site)])
                self.assertEqual(resp.status, 201, resp)
                self.assertEqual(len(self.stored(body)), 1)

    def test_same_origin_passes(self):
        """What the dashboard sends: Origin equal to the Host it used."""
        resp, body = self.post_message([("Origin", "http://" + self.host()),
                                        ("Sec-Fetch-Site", "same-origin")])
        self.assertEqual(resp.status, 201, resp)
        self.assertEqual(len(self.stored(body)), 1)
        lh = "localhost:%d" % self.hub.port
        resp = self.send("POST", "/v1/channels", [("Host", lh), ("Origin", "http://" + lh)],
                         json.dumps({"name": uid("ch")}).encode())
        self.assertEqual(resp.status, 201, resp)

    def test_delete_from_another_origin_refused(self):
        sess = self.session()
        resp = self.send("DELETE", "/v1/sessions/" + sess["session_id"],
                         [("Host", self.host()), ("Origin", "http://evil.example")])
        self.refused(resp, 403)
        agents = self.assertOk(self.hub.get("/v1/agents"))
        self.assertIn(sess["session_id"], [a["session_id"] for a in agents])

    def test_reads_from_another_origin_refused(self):
        """GETs too: answers are hidden by the browser anyway (no CORS), and
        some reads touch presence or expire sessions."""
        for hdr in (("Origin", "http://evil.example"), ("Sec-Fetch-Site", "cross-site")):
            for path in ("/v1/messages?channel=general", "/v1/hub-info",
                         "/v1/stream?agent_id=x", "/v1/agents?as=victim"):
                with self.subTest(hdr=hdr, path=path):
                    self.refused(self.send("GET", path, [("Host", self.host()), hdr]), 403)

    def test_dashboard_page_from_anywhere(self):
        resp = self.send("GET", "/", [("Host", self.host()), ("Origin", "http://evil.example"),
                                      ("Sec-Fetch-Site", "cross-site")])
        self.assertEqual(resp.status, 200)
        self.assertIn(b"<!doctype html>", resp.body)

    def test_no_cors_headers_ever(self):
        for method, path, body in (("OPTIONS", "/v1/messages", None),
                                   ("GET", "/v1/hub-info", None), ("GET", "/", None),
                                   ("POST", "/v1/channels", b'{"name":"corsy"}')):
            with self.subTest(method=method):
                resp = self.send(method, path, [("Host", self.host()),
                                                ("Origin", "http://" + self.host()),
                                                ("Access-Control-Request-Method", "POST")], body)
                self.assertNotEqual(resp.status, 0)   # no_cors() ran in send()

    def test_features(self):
        info = self.assertOk(self.hub.get("/v1/hub-info"))
        self.assertIn("arc:origin_check", info["features"])
        self.assertNotIn("arc:auth", info["features"])


@arc_only
class TokenTests(SecCase):
    """A hub with a token: every request but GET / must carry it."""

    @classmethod
    def setUpClass(cls):
        unittest.TestCase.setUpClass()
        cls.hub = Hub(token=TOKEN).start()
        cls.spool = os.path.join(cls.hub.dir, "spool")

    def auth(self, token=TOKEN):
        return [("Host", self.host()), ("Authorization", "Bearer " + token)]

    def arc(self, *args, env=None, timeout=60):
        e = {k: v for k, v in os.environ.items() if k not in ("ARC_URL", "ARC_AGENT")}
        e.update(env or {})
        return subprocess.run(hub_command() + [str(a) for a in args], cwd=self.hub.dir, env=e,
                               capture_output=True, text=True, timeout=timeout)

    def test_refused_before_the_body_is_read(self):
        """Host, Origin and token are checked when the head arrives: a
        refused request is answered without its body being sent (or held:
        48 unauthenticated 8 MiB bodies once pinned ~400 MB)."""
        cases = (([("Host", self.host())], 401),
                 ([("Host", "evil.example"), ("Authorization", "Bearer " + TOKEN)], 403),
                 (self.auth() + [("Origin", "http://evil.example")], 403))
        for headers, status in cases:
            with self.subTest(status=status, headers=headers):
                sock = connect(self.hub.port)
                try:
                    sock.sendall(raw_req("POST", "/v1/messages", headers + [
                        ("Content-Type", "application/json"),
                        ("Content-Length", "4000000")]))
                    resp = HTTPReader(sock, timeout=5).read_response()
                finally:
                    sock.close()
                self.assertIsNotNone(resp)
                self.assertEqual(resp.status, status, resp)
        # Admitted: the hub waits for the body as before.
        sock = connect(self.hub.port)
        try:
            body = json.dumps({"from_agent": "early", "channel": "general",
                               "body": "x" * 100000}).encode()
            sock.sendall(raw_req("POST", "/v1/messages", self.auth() + [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body)))]))
            sock.sendall(body)
            resp = HTTPReader(sock, timeout=10).read_response()
        finally:
            sock.close()
        self.assertEqual(resp.status, 201, resp)

    def test_http(self):
        resp = self.send("GET", "/v1/channels", [("Host", self.host())])
        err = self.refused(resp, 401, "requires a token")
        self.assertIn("ARC_TOKEN", err)
        self.assertEqual(resp.headers.get("www-authenticate"), 'Bearer realm="arc"')
        for bad in ("Bearer wrong", "Bearer " + TOKEN[:-1], "Bearer " + TOKEN + "x",
                    "Basic " + TOKEN, "Bearer", "Token " + TOKEN):
            with self.subTest(auth=bad):
                resp = self.send("GET", "/v1/channels",
                                 [("Host", self.host()), ("Authorization", bad)])
                self.refused(resp, 401, "invalid token")
        resp = self.send("GET", "/v1/channels", self.auth())
        self.assertEqual(resp.status, 200)
        resp = self.send("GET", "/v1/channels", [("Host", self.host()),
                                                 ("Authorization", "bearer  " + TOKEN)])
        self.assertEqual(resp.status, 200)
        # A refused write changes nothing.
        body = uid("noauth")
        resp = self.send("POST", "/v1/messages", [("Host", self.host())],
                         json.dumps({"from_agent": "x", "body": body}).encode())
        self.refused(resp, 401)
        self.assertEqual(self.stored(body), [])
        # The dashboard page needs no token; the API it calls does.
        self.assertEqual(self.send("GET", "/", [("Host", self.host())]).status, 200)
        info = self.assertOk(self.hub.get("/v1/hub-info"))
        self.assertIn("arc:auth", info["features"])
        self.assertIn("arc:origin_check", info["features"])

    def test_origin_checked_even_with_the_token(self):
        resp = self.send("POST", "/v1/channels", self.auth() + [("Origin", "http://evil.example")],
                         b'{"name":"x"}')
        self.refused(resp, 403)

    def test_long_poll(self):
        agent = uid("lp")
        self.session(agent)
        since = self.msg(body="before")["id"]
        path = qs("/v1/events", agent_id=agent, since_id=since, timeout=10)
        self.refused(self.send("GET", path, [("Host", self.host())]), 401)
        sock = connect(self.hub.port)
        try:
            sock.sendall(raw_req("GET", path, self.auth()))
            self.msg(body="wake " + agent)
            resp = HTTPReader(sock, 15).read_response()
            self.assertEqual(resp.status, 200)
            self.assertIn("wake " + agent, [m["body"] for m in resp.json()["result"]])
        finally:
            sock.close()

    def test_stream(self):
        agent = uid("sse")
        first = self.msg(body="backlog " + agent)["id"]
        base = qs("/v1/stream", agent_id=agent, since_id=first - 1)
        # Host first: SSE() sends Host 127.0.0.1 itself; a second one is refused.
        s = SSE(self.hub.port, base)
        self.addCleanup(s.close)
        self.assertEqual(s.read_head().status, 401)
        for path, headers in ((base, [("Authorization", "Bearer " + TOKEN)]),
                              (base + "&access_token=" + TOKEN, [])):
            with self.subTest(path=path):
                s = SSE(self.hub.port, path, headers)
                self.addCleanup(s.close)
                self.assertEqual(s.read_head().status, 200)
                self.assertEqual(s.next_event()["body"], "backlog " + agent)
                self.msg(body="live " + agent)
                self.assertEqual(s.next_event()["body"], "live " + agent)
        for path in (base + "&access_token=wrong", base + "&access_token="):
            s = SSE(self.hub.port, path)
            self.addCleanup(s.close)
            self.assertEqual(s.read_head().status, 401)
        # The query parameter is the stream's only: elsewhere it is ignored.
        resp = self.send("GET", "/v1/channels?access_token=" + TOKEN, [("Host", self.host())])
        self.refused(resp, 401)

    def test_cli(self):
        url = ["--base-url", self.hub.url]
        p = self.arc("post", "--agent", "cli", *url, "no token")
        self.assertEqual(p.returncode, 1, p)
        self.assertIn("requires a token", p.stderr)
        p = self.arc("post", "--agent", "cli", *url, "--token", "wrong-token", "hi")
        self.assertEqual(p.returncode, 1, p)
        self.assertIn("invalid token", p.stderr)
        body = uid("cli")
        p = self.arc("post", "--agent", "cli", *url, "--token", TOKEN, body + " flag")
        self.assertEqual(p.returncode, 0, p)
        p = self.arc("post", "--agent", "cli", *url, body + " env", env={"ARC_TOKEN": TOKEN})
        self.assertEqual(p.returncode, 0, p)
        tf = os.path.join(self.hub.dir, "token")
        with open(tf, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(tf, 0o600)
        p = self.arc("post", "--agent", "cli", *url, "--token-file", tf, body + " file")
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(p.stderr, "")
        for suffix in (" flag", " env", " file"):
            self.assertEqual(len(self.stored(body + suffix)), 1, suffix)
        p = self.arc("poll", "--agent", "cli2", *url, "--token-file", tf, "--timeout", "0",
                     "--include-self")
        self.assertEqual(p.returncode, 0, p)
        p = self.arc("whoami", "--agent", "cli3", *url, env={"ARC_TOKEN": TOKEN})
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(json.loads(p.stdout)["agent_id"], "cli3")

    def test_token_option_errors(self):
        empty = os.path.join(self.hub.dir, "empty-token")
        open(empty, "w").close()
        cases = [("--token-file", os.path.join(self.hub.dir, "missing")),
                 ("--token-file", empty), ("--token", "has space"), ("--token", ""),
                 ("--token", "x" * 257)]
        for args in cases:
            for cmd in (["post", "--agent", "a", "hi"], ["serve", "--port", "0"],
                        ["relay"], ["status"], ["smoke-agent", "--role", "smoke-a"]):
                with self.subTest(args=args, cmd=cmd[0]):
                    p = self.arc(*(cmd + list(args)))
                    self.assertEqual(p.returncode, 2, p)
                    self.assertIn("token", p.stderr)
        p = self.arc("post", "--agent", "a", "--token", "a", "--token-file", empty, "hi")
        self.assertEqual(p.returncode, 2)
        self.assertIn("not both", p.stderr)

    def test_relay_needs_no_token(self):
        body = uid("relayed")
        p = self.arc("post", "--agent", "sandboxed", "--relay-dir", self.spool, body)
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(len(self.stored(body)), 1)

    def test_smoke_agents(self):
        thread = uid("smoke")
        def role(r, transport, extra):
            return subprocess.Popen(
                hub_command() + ["smoke-agent", "--role", "smoke-" + r, "--transport", transport,
                                 "--base-url", self.hub.url, "--relay-dir", self.spool,
                                 "--thread-id", thread, "--claim-key", thread + "-k",
                                 "--timeout-sec", "30", "--poll-interval-sec", "0.2"] + extra,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.hub.dir,
                env=dict(os.environ, ARC_TOKEN=TOKEN) if r == "c" else None)
        procs = [role("a", "http", ["--token", TOKEN]), role("b", "relay", []),
                 role("c", "http", [])]
        for p in procs:
            out, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, (out, err))
        p = self.arc("smoke-agent", "--role", "smoke-a", "--transport", "http", "--base-url",
                     self.hub.url, "--timeout-sec", "5", "--thread-id", uid("x"))
        self.assertEqual(p.returncode, 1)
        self.assertIn("requires a token", p.stdout)

    def test_standalone_relay(self):
        """`arc relay` forwards a spool to the hub with its token."""
        for token, want in ((TOKEN, 0), (None, 1)):
            with self.subTest(token=bool(token)):
                spool = tempfile.mkdtemp(prefix="arc-fwd-", dir=self.hub.dir)
                args = hub_command() + ["relay", "--base-url", self.hub.url, "--spool-dir", spool]
                env = dict(os.environ, ARC_TOKEN=token) if token else None
                relay = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=env)
                self.addCleanup(lambda r=relay: (r.terminate(), r.wait(10)))
                body = uid("fwd")
                p = self.arc("post", "--agent", "far", "--relay-dir", spool, body)
                self.assertEqual(p.returncode, want, p)
                self.assertEqual(len(self.stored(body)), 1 - want)
                if want:
                    self.assertIn("requires a token", p.stderr)
                relay.terminate()
                self.assertEqual(relay.wait(10), 0)


class LifeCase(unittest.TestCase):
    """A temporary directory, and `arc` runs in it."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="arc-sec-")
        if not KEEP:
            self.addCleanup(shutil.rmtree, self.dir, True)

    def arc(self, *args, env=None, timeout=60):
        e = {k: v for k, v in os.environ.items() if k not in ("ARC_URL", "ARC_AGENT")}
        e.update(env or {})
        return subprocess.run(hub_command() + [str(a) for a in args], cwd=self.dir, env=e,
                              capture_output=True, text=True, timeout=timeout)


@arc_only
class LifecycleTokenTests(LifeCase):
    """ensure/status/stop with a token; the started hub gets it, not in argv."""

    def test_ensure_status_stop(self):
        port = free_port()
        where = ["--port", port, "--storage", os.path.join(self.dir, "arc.sqlite3")]
        p = self.arc("ensure", *where, env={"ARC_TOKEN": TOKEN})
        self.assertEqual(p.returncode, 0, p)
        out = json.loads(p.stdout)
        self.assertEqual((out["running"], out["started"]), (True, True))
        with open(os.path.join(self.dir, ".arc.pid")) as f:
            pid = json.load(f)["pid"]
        self.addCleanup(self.kill, pid)
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            self.assertNotIn(TOKEN.encode(), f.read())
        self.assertEqual(self.get(port, None), 401)
        self.assertEqual(self.get(port, TOKEN), 200)
        # Again with the token (as a flag now): found, not started.
        p = self.arc("ensure", *where, "--token", TOKEN)
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(json.loads(p.stdout)["started"], False)
        # Without it, or with another: running, but of no use to the caller.
        for extra in ([], ["--token", "another-token"]):
            p = self.arc("ensure", *where, *extra)
            self.assertEqual(p.returncode, 1, p)
            out = json.loads(p.stdout)
            self.assertEqual((out["running"], out["started"]), (True, False))
            self.assertIn("token", out["error"])
            p = self.arc("status", *where, *extra)
            self.assertEqual(p.returncode, 1, p)
            self.assertIn("token", json.loads(p.stdout)["error"])
        p = self.arc("status", *where, env={"ARC_TOKEN": TOKEN})
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(json.loads(p.stdout)["pid"], pid)
        # stop needs no token: it signals the pid from the pidfile.
        p = self.arc("stop", *where)
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(json.loads(p.stdout)["stopped"], True)

    def test_smoke_with_token(self):
        port = free_port()
        where = ["--port", port, "--storage", os.path.join(self.dir, "arc.sqlite3"),
                 "--spool-dir", os.path.join(self.dir, "spool")]
        tf = os.path.join(self.dir, "tok")
        with open(tf, "w") as f:
            f.write(TOKEN)
        os.chmod(tf, 0o600)
        p = self.arc("smoke", *where, "--token-file", tf, "--timeout-sec", "30")
        with open(os.path.join(self.dir, ".arc.pid")) as f:
            self.addCleanup(self.kill, json.load(f)["pid"])
        self.assertEqual(p.returncode, 0, p)
        self.assertIn("smoke: ok", p.stdout)
        self.assertEqual(self.get(port, None), 401)

    @staticmethod
    def get(port, token):
        req = urllib.request.Request("http://127.0.0.1:%d/v1/hub-info" % port)
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    @staticmethod
    def kill(pid):
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            return
        def gone():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except OSError:
                return True
        wait_for(gone, timeout=10)


@arc_only
class RemoteBindTests(LifeCase):
    """A non-loopback address needs --allow-remote and a token (or the
    explicit --insecure-no-auth)."""

    def serve(self, *args, env=None):
        return self.arc("serve", "--port", free_port(), "--storage",
                        os.path.join(self.dir, "a.db"), "--spool-dir",
                        os.path.join(self.dir, "spool"), *args, env=env, timeout=20)

    def test_refused_without_token(self):
        p = self.serve("--host", "0.0.0.0")
        self.assertEqual(p.returncode, 2)
        self.assertIn("--allow-remote", p.stderr)
        p = self.serve("--host", "0.0.0.0", "--allow-remote")
        self.assertEqual(p.returncode, 2)
        self.assertIn("without a token", p.stderr)
        self.assertIn("--insecure-no-auth", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "a.db")))
        # ensure passes the refusal on.
        p = self.arc("ensure", "--host", "0.0.0.0", "--allow-remote", "--port", free_port(),
                     "--storage", os.path.join(self.dir, "b.db"), "--timeout", "10")
        self.assertNotEqual(p.returncode, 0)

    def check_hub(self, hub, token):
        info = self.assertOk(hub.get("/v1/hub-info"))
        self.assertIs(info["allow_remote"], True)
        self.assertEqual("arc:auth" in info["features"], bool(token))
        # The reference's rule stands: a non-loopback hub may set the flag.
        r = hub.post("/v1/network", {"allow_remote": False})
        self.assertEqual(r[0], 200)
        self.assertIs(r[2]["result"]["allow_remote"], False)
        self.assertEqual(r[2]["result"]["listen_host"], "0.0.0.0")

    def assertOk(self, resp):
        self.assertEqual(resp[0], 200, resp)
        return resp[2]["result"]

    def test_insecure_no_auth(self):
        hub = Hub().start(["--host", "0.0.0.0", "--allow-remote", "--insecure-no-auth"])
        self.addCleanup(hub.stop)
        self.check_hub(hub, None)
        self.assertIn("NO AUTHENTICATION", hub.log_text())

    def test_with_token(self):
        hub = Hub(token=TOKEN).start(["--host", "0.0.0.0", "--allow-remote"])
        self.addCleanup(hub.stop)
        self.check_hub(hub, TOKEN)
        self.assertNotIn("NO AUTHENTICATION", hub.log_text())
        self.assertEqual(hub.request("GET", "/v1/hub-info",
                                     headers={"Authorization": "Bearer x"})[0], 401)


@arc_only
class FileModeTests(unittest.TestCase):
    """Storage, -wal, -shm and pidfile 0600, spool directories 0700, even
    under umask 000."""

    def test_modes(self):
        old = os.umask(0)
        try:
            hub = Hub().start()
        finally:
            os.umask(old)
        self.addCleanup(hub.stop)
        status, _, _ = hub.post("/v1/messages", {"from_agent": "m", "body": "x"})
        self.assertEqual(status, 201)
        p = subprocess.run(hub_command() + ["post", "--agent", "spooler", "--relay-dir",
                                            os.path.join(hub.dir, "spool"), "hi"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p)
        mode = lambda path: stat.S_IMODE(os.stat(path).st_mode)
        for suffix in ("", "-wal", "-shm"):
            self.assertEqual(oct(mode(hub.storage + suffix)), oct(0o600), suffix)
        self.assertEqual(oct(mode(os.path.join(hub.dir, ".arc.pid"))), oct(0o600))
        spool = os.path.join(hub.dir, "spool")
        for d in ("", "requests", "responses", "requests/spooler", "responses/spooler"):
            self.assertEqual(oct(mode(os.path.join(spool, d))), oct(0o700), d)


@arc_only
class ReferenceClientTests(HubCase):
    """The reference's client on loopback, unchanged: it sends Host
    127.0.0.1:PORT and no Origin."""

    def test_urllib_like_the_reference(self):
        body = json.dumps({"from_agent": "refclient", "body": "via urllib"}).encode()
        req = urllib.request.Request(self.hub.url + "/v1/messages", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            self.assertEqual(r.status, 201)

    def test_reference_arc_client(self):
        path = reference_py()
        if not path:
            self.skipTest("the reference's arc.py is not here (set ARC_REF_PY)")
        spec = importlib.util.spec_from_file_location("arc_reference", path)
        ref = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = ref          # its dataclasses look it up there
        self.addCleanup(sys.modules.pop, spec.name, None)
        spec.loader.exec_module(ref)
        alice = ref.ArcClient("ref-alice", base_url=self.hub.url)
        bob = ref.ArcClient("ref-bob", base_url=self.hub.url)
        alice.register()
        bob.register()
        bob.bootstrap()
        alice.post("general", "hello bob, from the reference client")
        got = bob.poll(timeout=5)
        self.assertIn("hello bob, from the reference client", [m["body"] for m in got])


if __name__ == "__main__":
    unittest.main()
