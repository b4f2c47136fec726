"""Input limits (PROTOCOL.md §3.4, §3.6, §4.3, §7) and header checks (§2):
stored JSON depth (ARC_MAX_STORED_DEPTH), metadata size (max_metadata_chars),
the page byte budget of message reads (ARC_MAX_PAGE_BYTES), NUL bytes in
identifiers, the int64 sentinel in reply_to, duplicate Origin and
Sec-Fetch-Site headers, DEL in header values, Expect: 100-continue, and the
dashboard's frame headers. arc-only: the reference has none of these limits.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_limits -v
"""

import json
import os
import socket
import subprocess
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hubtest import (HTTPReader, HubCase, arc_only, connect, hub_command, uid,  # noqa: E402
                     wait_for)

STORED_DEPTH = 64               # ARC_MAX_STORED_DEPTH
PAGE_BYTES = 1 << 20            # ARC_MAX_PAGE_BYTES
INT64_MIN = -9223372036854775808


def nest(depth):
    """An object nested `depth` levels deep ({} is depth 1)."""
    v = {}
    for _ in range(depth - 1):
        v = {"a": v}
    return v


def raw_req(method, path, headers=(), body=None):
    lines = ["%s %s HTTP/1.1" % (method, path)]
    lines += ["%s: %s" % kv for kv in headers]
    if body is not None:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@arc_only
class StoredDepthTests(HubCase):
    """Every JSON value the hub stores and echoes must stay readable by arc's
    own parser inside the deepest answer that carries it."""

    def test_deep_values_refused_everywhere(self):
        deep = nest(STORED_DEPTH + 1)
        ch = self.channel()
        cases = [
            ("/v1/messages", {"from_agent": "a", "body": "x", "channel": ch, "metadata": deep}),
            ("/v1/messages", {"from_agent": "a", "channel": ch, "attachments": [
                {"type": "json", "content": nest(STORED_DEPTH - 1)}]}),
            ("/v1/messages", {"from_agent": "a", "channel": ch, "attachments": [
                {"type": "file_ref", "path": "p", "description": nest(STORED_DEPTH - 1)}]}),
            ("/v1/sessions", {"agent_id": uid(), "metadata": deep}),
            ("/v1/channels", {"name": uid(), "metadata": deep}),
            ("/v1/claims", {"owner_agent_id": "a", "claim_key": uid(), "metadata": deep}),
            ("/v1/locks", {"agent_id": "a", "file_path": uid(), "metadata": deep}),
        ]
        for path, body in cases:
            with self.subTest(path=path, keys=sorted(body)):
                err = self.assertErr(self.hub.post(path, body), 400)
                self.assertIn("ARC_MAX_STORED_DEPTH", err)
        # The reported case: 127 levels used to be stored with 201.
        err = self.assertErr(self.hub.post("/v1/messages", {
            "from_agent": "a", "body": "x", "channel": ch, "metadata": nest(127)}), 400)
        self.assertIn("%d" % STORED_DEPTH, err)
        _, _, page = self.hub.get("/v1/messages", channel=ch)
        self.assertEqual(page["result"], [])

    def test_deepest_allowed_value_is_readable_by_arc(self):
        """At the limit a value is stored, and arc's own clients read every
        answer that carries it (arc poll used to fail on such answers)."""
        agent, th = uid("deep"), uid("th")
        m = self.msg(from_agent="x", body="deep", metadata=nest(STORED_DEPTH), thread_id=th,
                     attachments=[{"type": "json", "content": nest(STORED_DEPTH - 2)}])
        self.assertEqual(m["metadata"], nest(STORED_DEPTH))
        for path in ("/v1/messages?channel=general&since_id=%d" % (m["id"] - 1),
                     "/v1/threads/" + th):
            with self.subTest(path=path):
                self.assertEqual(self.hub.request("GET", path)[0], 200)
        proc = subprocess.run(hub_command() + ["poll", "--agent", agent, "--base-url",
                                               self.hub.url, "--timeout", "0", "--since-id",
                                               str(m["id"] - 1)],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(json.loads(proc.stdout.splitlines()[0])["id"], m["id"])


@arc_only
class MetadataSizeTests(HubCase):
    """--max-metadata-chars bounds every stored metadata object, counted as
    max_attachment_chars is (Python's len(json.dumps(value)))."""

    hub_args = ("--max-metadata-chars", "100")

    def test_limit(self):
        info = self.assertOk(self.hub.get("/v1/hub-info"))
        self.assertEqual(info["max_metadata_chars"], 100)
        fits = {"k": "x" * (100 - len(json.dumps({"k": ""})))}
        over = {"k": fits["k"] + "y"}
        self.assertEqual(len(json.dumps(fits)), 100)
        self.msg(body="fits", metadata=fits)
        for path, body in (
                ("/v1/messages", {"from_agent": "a", "body": "x", "metadata": over}),
                ("/v1/sessions", {"agent_id": uid(), "metadata": over}),
                ("/v1/channels", {"name": uid(), "metadata": over}),
                ("/v1/claims", {"owner_agent_id": "a", "claim_key": uid(), "metadata": over}),
                ("/v1/locks", {"agent_id": "a", "file_path": uid(), "metadata": over})):
            with self.subTest(path=path):
                err = self.assertErr(self.hub.post(path, body), 400)
                self.assertIn("metadata exceeds max size", err)

    def test_default(self):
        proc = subprocess.run(hub_command() + ["serve", "--help"], capture_output=True,
                              text=True, timeout=30)
        self.assertIn("--max-metadata-chars", proc.stdout)


@arc_only
class PageBudgetTests(HubCase):
    """A page of messages stops before ARC_MAX_PAGE_BYTES (one message that
    alone is larger is sent alone); the answer then says "more": true and the
    client continues with since_id as always."""

    BIG = 250000  # attachment bytes: with the body ~300 KB a message, 3 fit a page

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ch, cls.th, cls.to = uid("big"), uid("th"), uid("to")
        cls.hub.post("/v1/channels", {"name": cls.ch})
        cls.ids = []
        for i in range(10):
            body = {"from_agent": "big", "channel": cls.ch, "thread_id": cls.th,
                    "body": ("%d" % i) * 50000,
                    "attachments": [{"type": "text", "content": "z" * cls.BIG}]}
            _, _, p = cls.hub.post("/v1/messages", body)
            cls.ids.append(p["result"]["id"])
            body["to_agent"] = cls.to
            _, _, p = cls.hub.post("/v1/messages", body)

    def page(self, path):
        status, _, payload = self.hub.request("GET", path)
        self.assertEqual(status, 200, payload)
        raw = json.dumps(payload["result"]).encode()
        return payload, raw

    def read_all(self, path, since=0):
        got, more = [], []
        while True:
            payload, raw = self.page(path + "&since_id=%d" % since)
            rows = payload["result"]
            if isinstance(rows, dict):
                rows = rows["messages"]
            if not rows:
                return got, more
            self.assertLessEqual(len(raw), PAGE_BYTES + 4096)
            got += [m["id"] for m in rows]
            more.append(payload.get("more", False))
            since = rows[-1]["id"]

    def test_channel_pages(self):
        got, more = self.read_all("/v1/messages?limit=500&channel=" + self.ch)
        self.assertEqual(got, self.ids)
        self.assertTrue(more[0])
        self.assertGreater(len(more), 3)

    def test_events_and_inbox_pages(self):
        got, _ = self.read_all("/v1/events?limit=500&agent_id=x&channel=" + self.ch)
        self.assertEqual(got, self.ids)
        got, _ = self.read_all("/v1/inbox/%s?limit=500" % self.to)
        self.assertEqual(len(got), 10)

    def test_tail_keeps_the_newest(self):
        payload, raw = self.page("/v1/messages?limit=500&tail=1&channel=" + self.ch)
        rows = [m["id"] for m in payload["result"]]
        self.assertTrue(payload["more"])
        self.assertLessEqual(len(raw), PAGE_BYTES)
        self.assertEqual(rows, self.ids[-len(rows):])

    def test_thread_detail(self):
        th = urllib.parse.quote(self.th)
        got, more = self.read_all("/v1/threads/%s?x=1" % th)
        self.assertEqual(len(got), 20)
        self.assertTrue(more[0])
        payload, _ = self.page("/v1/threads/" + th)
        self.assertEqual(payload["result"]["thread"]["message_count"], 20)

    def test_one_large_message_alone(self):
        ch = self.channel()
        self.msg(channel=ch, body="x" * 100000, attachments=[
            {"type": "text", "content": "y" * 250000} for _ in range(4)])
        payload, raw = self.page("/v1/messages?channel=" + ch)
        self.assertEqual(len(payload["result"]), 1)
        self.assertGreater(len(raw), PAGE_BYTES)

    def test_long_poll_answer_bounded(self):
        ch = self.channel()
        since = self.msg(channel=ch, body="start")["id"]
        sock = connect(self.hub.port, timeout=30)
        try:
            sock.sendall(raw_req("GET", "/v1/messages?limit=500&timeout=20&channel=%s"
                                 "&since_id=%d" % (ch, since),
                                 [("Host", "127.0.0.1")]))
            time.sleep(0.2)
            # Many posts in one turn: one connection, pipelined.
            data = b"".join(raw_req("POST", "/v1/messages", [("Host", "127.0.0.1")], json.dumps(
                {"from_agent": "big", "channel": ch, "attachments": [
                    {"type": "text", "content": "q" * self.BIG}]}).encode()) for _ in range(8))
            w = connect(self.hub.port, timeout=30)
            w.sendall(data)
            resp = HTTPReader(sock, timeout=30).read_response()
            self.assertEqual(resp.status, 200)
            self.assertLessEqual(len(resp.body), PAGE_BYTES + 4096)
            self.assertGreaterEqual(len(resp.json()["result"]), 1)
            w.close()
        finally:
            sock.close()


@arc_only
class NulTests(HubCase):
    """NUL is refused in identifiers, in bodies, query strings and paths."""

    def test_bodies(self):
        ch = self.channel()
        n = "\u0000x"
        cases = [
            ("/v1/messages", {"from_agent": "a", "body": "x", "channel": ch + n}),
            ("/v1/messages", {"from_agent": "a" + n, "body": "x", "channel": ch}),
            ("/v1/messages", {"from_agent": "a", "body": "x", "to_agent": "b" + n}),
            ("/v1/messages", {"from_agent": "a", "body": "x", "channel": ch, "thread_id": "t" + n}),
            ("/v1/channels", {"name": ch + n}),
            ("/v1/sessions", {"agent_id": "a" + n}),
            ("/v1/sessions", {"agent_id": uid(), "capabilities": ["c" + n]}),
            ("/v1/claims", {"owner_agent_id": "a", "claim_key": "k" + n}),
            ("/v1/claims", {"owner_agent_id": "a", "claim_key": uid(), "thread_id": "t" + n}),
            ("/v1/claims", {"owner_agent_id": "a", "task_message_id": "5" + n}),
            ("/v1/locks", {"agent_id": "a", "file_path": "f" + n}),
            ("/v1/locks/release", {"agent_id": "a" + n, "file_path": "f"}),
        ]
        for path, body in cases:
            with self.subTest(path=path, body=body):
                self.assertErr(self.hub.post(path, body), 400)
        _, _, chans = self.hub.get("/v1/channels")
        self.assertNotIn(ch + n, [c["name"] for c in chans["result"]])

    def test_queries_and_paths(self):
        alice = uid("alice")
        self.msg(from_agent="x", to_agent=alice, body="for alice only")
        for path in ("/v1/messages?channel=general%00x",
                     "/v1/messages?channel=general&thread_id=t%00",
                     "/v1/events?agent_id=" + alice + "%00x",
                     "/v1/events?agent_id=" + alice + "%00x&timeout=1",
                     "/v1/stream?agent_id=" + alice + "%00x",
                     "/v1/agents?capability=c%00",
                     "/v1/claims?thread_id=t%00",
                     "/v1/tasks?channel=general%00x",
                     "/v1/inbox/" + alice + "%00x",
                     "/v1/threads/t%00x",
                     "/v1/bootstrap?agent_id=" + alice + "%00x"):
            with self.subTest(path=path):
                err = self.assertErr(self.hub.request("GET", path), 400)
                self.assertIn("NUL", err)
        err = self.assertErr(self.hub.post("/v1/sessions/%s%%00x/rename" % alice,
                                           {"display_name": "n"}), 400)
        self.assertIn("NUL", err)


@arc_only
class SentinelTests(HubCase):
    """INT64_MIN is arc's 'absent' for some int64 fields: refused as input."""

    def test_reply_to_min(self):
        err = self.assertErr(self.hub.post("/v1/messages", {
            "from_agent": "a", "body": "x", "reply_to": INT64_MIN}), 400)
        self.assertIn("reply_to", err)
        m = self.msg(body="y", reply_to=INT64_MIN + 1)
        self.assertEqual(m["reply_to"], INT64_MIN + 1)

    def test_task_message_id_min(self):
        err = self.assertErr(self.hub.post("/v1/claims", {
            "owner_agent_id": "a", "task_message_id": INT64_MIN}), 400)
        self.assertIn("task_message_id", err)


@arc_only
class HeaderTests(HubCase):
    """Duplicate Origin / Sec-Fetch-Site are refused like a duplicate Host,
    DEL in a header value like other control characters, and GET / may not
    be framed."""

    def host(self):
        return ("Host", "127.0.0.1:%d" % self.hub.port)

    def test_duplicates_refused(self):
        origin = "http://127.0.0.1:%d" % self.hub.port
        for hdrs, text in (
                ([("Origin", origin), ("Origin", origin)], "multiple Origin headers"),
                ([("Origin", "http://evil.example"), ("Origin", origin)],
                 "multiple Origin headers"),
                ([("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Site", "same-origin")],
                 "multiple Sec-Fetch-Site headers")):
            for path in ("/v1/channels", "/"):
                with self.subTest(hdrs=hdrs, path=path):
                    resp = self.hub.raw(raw_req("GET", path, [self.host()] + hdrs))
                    self.assertEqual(resp.status, 400, resp)
                    self.assertIn(text, resp.json()["error"])

    def test_del_in_header_value(self):
        resp = self.hub.raw(raw_req("GET", "/v1/channels", [self.host(), ("X-A", "a\x7fb")]))
        self.assertEqual(resp.status, 400, resp)
        self.assertIn("control character in header value", resp.json()["error"])

    def test_dashboard_frame_headers(self):
        status, headers, _ = self.hub.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("x-frame-options"), "DENY")
        csp = [d.strip() for d in headers.get("content-security-policy", "").split(";")]
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertIn("default-src 'self'", csp)
        self.assertEqual(headers.get("x-content-type-options"), "nosniff")


@arc_only
class ExpectContinueTests(HubCase):
    """Expect: 100-continue is answered once the head passes framing and
    access checks; a refused request gets its final answer at once."""

    def head(self, path, extra=()):
        body = json.dumps({"from_agent": "e", "body": uid("cont")}).encode()
        lines = ["POST %s HTTP/1.1" % path, "Content-Length: %d" % len(body),
                 "Expect: 100-continue"] + ["%s: %s" % kv for kv in extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode(), body

    def test_continue_then_answer(self):
        head, body = self.head("/v1/messages", [("Host", "127.0.0.1")])
        sock = connect(self.hub.port, timeout=5)
        try:
            sock.sendall(head)
            reader = HTTPReader(sock, timeout=5)
            while b"\r\n\r\n" not in reader.buf:   # an interim answer: no body
                self.assertTrue(reader._fill(), reader.buf)
            first, reader.buf = reader.buf.split(b"\r\n\r\n", 1)
            self.assertEqual(first, b"HTTP/1.1 100 Continue")
            self.assertEqual(reader.buf, b"")
            sock.sendall(body)
            resp = reader.read_response()
            self.assertEqual(resp.status, 201, resp)
            # Keep-alive: the next request is served normally, with no 100.
            sock.sendall(raw_req("GET", "/v1/channels", [("Host", "127.0.0.1")]))
            self.assertEqual(reader.read_response().status, 200)
        finally:
            sock.close()

    def test_refused_answered_at_once(self):
        for extra, status in (([("Host", "evil.example")], 403),
                              ([("Host", "127.0.0.1"), ("Origin", "http://evil.example")], 403),
                              ([], 400)):
            with self.subTest(extra=extra):
                head, _ = self.head("/v1/messages", extra)
                sock = connect(self.hub.port, timeout=5)
                try:
                    sock.sendall(head)
                    reader = HTTPReader(sock, timeout=5)
                    resp = reader.read_response()
                    self.assertEqual(resp.status, status, resp)
                    self.assertEqual(resp.headers.get("connection"), "close")
                    self.assertTrue(reader.closed_by_peer())
                finally:
                    sock.close()

    def test_no_continue_for_http10(self):
        """RFC 9110 §10.1.1: no 100 to an HTTP/1.0 client."""
        head, body = self.head("/v1/messages")
        head = head.replace(b"HTTP/1.1", b"HTTP/1.0")
        sock = connect(self.hub.port, timeout=5)
        try:
            sock.sendall(head)
            reader = HTTPReader(sock, timeout=0.5)
            with self.assertRaises(socket.timeout):
                reader._fill()
            sock.sendall(body)
            reader.sock.settimeout(5)
            self.assertEqual(reader.read_response().status, 201)
        finally:
            sock.close()

    def test_curl_gets_its_100_continue(self):
        """curl sends `Expect: 100-continue` with a body over 1 MiB and waits
        up to 1 s for the 100 before sending it: it must get one (its -v
        trace shows what it received; no timing is asserted)."""
        import shutil
        if not shutil.which("curl"):
            self.skipTest("no curl")
        body = json.dumps({"from_agent": "c", "body": "x",
                           "attachments": [{"type": "text", "content": "a" * 250000}
                                           for _ in range(5)]})
        proc = subprocess.run(["curl", "-sv", "-o", "/dev/null", "-w", "%{http_code}",
                               "--data-binary", "@-", "-H", "Content-Type: application/json",
                               self.hub.url + "/v1/messages"],
                              input=body, capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.stdout, "201")
        self.assertIn("> Expect: 100-continue", proc.stderr)
        self.assertIn("< HTTP/1.1 100 Continue", proc.stderr)

if __name__ == "__main__":
    unittest.main()
