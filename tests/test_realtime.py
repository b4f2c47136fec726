"""Real-time delivery tests for the arc hub: long-polls, the event stream,
presence while waiting, several hubs on one file, and shutdown.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_realtime -v
Everything here is arc behaviour (PROTOCOL.md §8, §7.27-§7.30); the whole
module is skipped when ARC_REF=1.

Synchronisation: a request sent on socket A is known to be parked once a
request sent afterwards on another socket B has been answered -- the hub is
one event loop and handles every readable connection in a turn before it
writes that turn's answers (see Case.sync). No fixed sleeps are used for
ordering; the only waits that last seconds are the ones whose point is the
passage of time (timeouts, the 15 s keepalive, the presence TTL).
"""

import http.client
import json
import os
import signal
import socket
import sqlite3
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hubtest import (HTTPReader, Hub, HubCase, arc_only, connect, qs, uid,  # noqa: E402
                     wait_for)

WAKE_LIMIT = 2.0          # a matching post must wake a waiter within this
FOREIGN_WAKE_LIMIT = 1.0  # ... and within this when posted through another hub


def http_get(path, extra_headers=()):
    lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1"]
    lines += ["%s: %s" % kv for kv in extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def result_of(resp):
    """The result of a JSON success envelope read with HTTPReader."""
    assert resp is not None, "connection closed without a response"
    assert resp.status == 200, resp
    payload = resp.json()
    assert payload.get("ok") is True, payload
    return payload["result"]


class Waiter:
    """A long-poll sent on its own raw socket; answered later."""

    def __init__(self, port, path, timeout=75, linger_rst=False):
        self.timeout = timeout
        self.sock = connect(port, timeout)
        if linger_rst:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.sendall(http_get(path))
        self.sent = time.monotonic()
        self.reader = HTTPReader(self.sock, timeout)
        self.answered = None

    def pending(self):
        """True while the hub has sent nothing back and not closed (non-blocking)."""
        if self.reader.buf:
            return False
        self.sock.setblocking(False)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
            return False          # bytes, or EOF
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(self.timeout)

    def response(self, timeout=None):
        if timeout is not None:
            self.sock.settimeout(timeout)
        r = self.reader.read_response()
        self.answered = time.monotonic()
        return r

    def result(self, timeout=None):
        return result_of(self.response(timeout))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class SSE:
    """A raw /v1/stream client that parses frames as they arrive."""

    def __init__(self, port, path, headers=(), rcvbuf=None, timeout=10):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(http_get(path, headers))
        self.buf = b""
        self.eof = False
        self.status = None
        self.headers = {}

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_head(self, timeout=5):
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise AssertionError("stream closed before its head: %r" % self.buf[:200])
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("iso-8859-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        return self

    def next_block(self, timeout=5):
        """Next frame as a dict: {"id", "data", "comments", "retry"}; None at EOF.

        Raises socket.timeout when nothing complete arrives in time."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.buf:
            if self.eof or not self._fill(deadline):
                return None
        block, self.buf = self.buf.split(b"\n\n", 1)
        frame = {"id": None, "data": None, "comments": [], "retry": None}
        for line in block.decode("utf-8").split("\n"):
            if line.startswith(":"):
                frame["comments"].append(line)
            elif line.startswith("id:"):
                frame["id"] = int(line[3:].strip())
            elif line.startswith("data:"):
                frame["data"] = json.loads(line[5:].lstrip(" "))
            elif line.startswith("retry:"):
                frame["retry"] = int(line[6:].strip())
            else:
                raise AssertionError("unexpected stream line %r" % line)
        return frame

    def next_event(self, timeout=5):
        """Next message frame (skipping comments and retry), or None at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next_block(max(0.001, deadline - time.monotonic()))
            if frame is None:
                return None
            if frame["data"] is not None:
                assert frame["id"] == frame["data"]["id"], frame
                return frame["data"]

    def wait_eof(self, timeout=10):
        """True if the hub closes the stream before the deadline."""
        deadline = time.monotonic() + timeout
        try:
            while not self.eof:
                self._fill(deadline)
        except socket.timeout:
            return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Case(HubCase):
    """Helpers shared by the real-time tests."""

    def sync(self, hub=None):
        """A round trip on a fresh connection: every request sent on any
        socket before this call has been read and handled (parked) by now."""
        status, _, _ = (hub or self.hub).get("/v1/hub-info")
        self.assertEqual(status, 200)

    def mark(self):
        """The newest message id, by posting a marker into a private channel."""
        if not getattr(type(self), "_sink", None):
            type(self)._sink = self.channel(uid("sink"))
        return self.msg("marker", "mark", channel=type(self)._sink)["id"]

    def waiter(self, path, **kw):
        w = Waiter(self.hub.port, path, **kw)
        self.addCleanup(w.close)
        return w

    def stream(self, hub=None, headers=(), **params):
        s = SSE((hub or self.hub).port, qs("/v1/stream", **params), headers=headers)
        self.addCleanup(s.close)
        s.read_head()
        self.assertEqual(s.status, 200)
        return s

    def assertParked(self, w):
        self.assertTrue(w.pending(), "the long-poll was answered before anything matched")

    def assertWokenWith(self, w, posted_at, expected):
        result = w.result(timeout=35)
        elapsed = w.answered - posted_at
        self.assertEqual(result, expected)
        self.assertLess(elapsed, WAKE_LIMIT, "wake took %.3fs" % elapsed)
        return elapsed


# ── long-polls ──────────────────────────────────────────────────────────

@arc_only
class LongPollTests(Case):

    def test_events_long_poll_woken_by_broadcast(self):
        b = uid("b")
        since = self.mark()
        w = self.waiter(qs("/v1/events", agent_id=b, since_id=since, timeout=30))
        self.sync()
        self.assertParked(w)
        t0 = time.monotonic()
        m = self.msg(uid("poster"), "wake up")
        self.assertWokenWith(w, t0, [m])

    def test_events_long_poll_woken_by_matching_filters(self):
        b = uid("b")
        ch = self.channel()
        thread = uid("th")
        cases = [
            ("dm", dict(), dict(to_agent=b, channel="direct")),
            ("channel", dict(channel=ch), dict(channel=ch)),
            ("thread", dict(thread_id=thread), dict(thread_id=thread)),
            ("exclude_self other sender", dict(exclude_self=1), dict()),
            ("own message without exclude_self", dict(), dict(from_agent=b)),
        ]
        for name, filters, fields in cases:
            with self.subTest(name):
                since = self.mark()
                w = self.waiter(qs("/v1/events", agent_id=b, since_id=since, timeout=30, **filters))
                self.sync()
                self.assertParked(w)
                sender = fields.pop("from_agent", uid("poster"))
                t0 = time.monotonic()
                m = self.msg(sender, "for " + name, **fields)
                self.assertWokenWith(w, t0, [m])

    def test_non_matching_posts_do_not_wake(self):
        # Five waiters at once, each with a post that must not wake it and
        # that matches none of the others either; all end at their 2 s timeout.
        cA, cB, cC, cD, cE = (self.channel() for _ in range(5))
        t1, t2 = uid("th1"), uid("th2")
        agents = [uid("b%d" % i) for i in range(5)]
        since = self.mark()
        waiters = {
            "channel filter, post elsewhere":
                self.waiter(qs("/v1/events", agent_id=agents[0], since_id=since, timeout=2,
                               channel=cA)),
            "dm to someone else":
                self.waiter(qs("/v1/events", agent_id=agents[1], since_id=since, timeout=2,
                               channel=cB)),
            "own message with exclude_self":
                self.waiter(qs("/v1/events", agent_id=agents[2], since_id=since, timeout=2,
                               channel=cC, exclude_self=1)),
            "thread mismatch":
                self.waiter(qs("/v1/events", agent_id=agents[3], since_id=since, timeout=2,
                               thread_id=t1)),
            "messages long-poll vs a dm":
                self.waiter(qs("/v1/messages", channel="general", since_id=since, timeout=2)),
        }
        self.sync()
        for w in waiters.values():
            self.assertParked(w)
        self.msg(uid("x"), "elsewhere", channel=cE)
        self.msg(uid("x"), "dm to other", channel=cB, to_agent=uid("other"))
        self.msg(agents[2], "my own", channel=cC)
        self.msg(uid("x"), "other thread", channel=cD, thread_id=t2)
        self.msg(uid("x"), "dm labelled general", channel="general", to_agent=agents[4])
        for name, w in waiters.items():
            with self.subTest(name):
                result = w.result(timeout=10)
                elapsed = w.answered - w.sent
                self.assertEqual(result, [])
                self.assertGreaterEqual(elapsed, 1.8, "answered early (%.3fs)" % elapsed)
                self.assertLess(elapsed, 4.0)

    def test_messages_long_poll_woken_by_channel_post_not_dm(self):
        since = self.mark()
        w = self.waiter(qs("/v1/messages", channel="general", since_id=since, timeout=30))
        self.sync()
        self.assertParked(w)
        self.msg(uid("x"), "a dm", channel="general", to_agent=uid("someone"))
        self.sync()
        self.assertParked(w)
        t0 = time.monotonic()
        m = self.msg(uid("x"), "for the channel", channel="general")
        self.assertWokenWith(w, t0, [m])

    def test_timeout_with_nothing_returns_empty(self):
        since = self.mark()
        w = self.waiter(qs("/v1/events", agent_id=uid("b"), since_id=since,
                           channel=self.channel(), timeout=1))
        result = w.result(timeout=10)
        elapsed = w.answered - w.sent
        self.assertEqual(result, [])
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 3.0)

    def test_timeout_is_clamped(self):
        since = self.mark()
        # far above the cap: accepted (parked, not a 400) and woken normally
        w = self.waiter(qs("/v1/events", agent_id=uid("b"), since_id=since, timeout=1000))
        self.sync()
        self.assertParked(w)
        t0 = time.monotonic()
        m = self.msg(uid("x"), "clamped")
        self.assertWokenWith(w, t0, [m])
        # below zero: clamped to 0, answered at once
        t0 = time.monotonic()
        status, _, payload = self.hub.get("/v1/events", agent_id=uid("b"),
                                          since_id=m["id"], timeout=-5)
        self.assertEqual(status, 200, payload)
        self.assertEqual(payload["result"], [])
        self.assertLess(time.monotonic() - t0, 1.0)

    def test_200_concurrent_waiters_all_woken(self):
        since = self.mark()
        ch = self.channel()
        waiters = []
        for i in range(200):
            path = (qs("/v1/events", agent_id="w%03d-%s" % (i, ch), since_id=since,
                       channel=ch, timeout=30) if i % 2 == 0 else
                    qs("/v1/messages", channel=ch, since_id=since, timeout=30))
            waiters.append(self.waiter(path))
        self.sync()
        self.assertTrue(all(w.pending() for w in waiters))
        t0 = time.monotonic()
        m = self.msg(uid("x"), "to everyone", channel=ch)
        got = 0
        for w in waiters:
            self.assertEqual(w.result(timeout=10), [m])
            got += 1
        elapsed = max(w.answered for w in waiters) - t0
        self.assertEqual(got, 200)
        self.assertLess(elapsed, 5.0)
        print("\n    200 waiters woken; last answer read %.1f ms after the post"
              % (elapsed * 1000))

    def test_disconnected_waiter_is_harmless(self):
        since = self.mark()
        gone = self.waiter(qs("/v1/events", agent_id=uid("gone"), since_id=since, timeout=30))
        rst = self.waiter(qs("/v1/events", agent_id=uid("rst"), since_id=since, timeout=30),
                          linger_rst=True)
        self.sync()
        gone.close()
        rst.close()           # SO_LINGER 0: the hub sees a reset
        self.sync()
        w = self.waiter(qs("/v1/events", agent_id=uid("b"), since_id=since, timeout=30))
        self.sync()
        self.assertParked(w)
        t0 = time.monotonic()
        m = self.msg(uid("x"), "after the hang-up")
        self.assertWokenWith(w, t0, [m])
        self.msg(uid("x"), "and another")
        status, _, payload = self.hub.get("/v1/channels")
        self.assertEqual(status, 200)
        self.assertTrue(self.hub.alive())

    def test_pipelined_request_behind_parked_long_poll(self):
        since = self.mark()
        sock = connect(self.hub.port, 30)
        self.addCleanup(sock.close)
        sock.sendall(http_get(qs("/v1/events", agent_id=uid("b"), since_id=since, timeout=5))
                     + http_get("/v1/channels"))
        reader = HTTPReader(sock, 30)
        self.sync()
        # nothing, not even the channels answer, may come before the long-poll
        sock.setblocking(False)
        with self.assertRaises(BlockingIOError):
            sock.recv(1, socket.MSG_PEEK)
        sock.settimeout(30)
        t0 = time.monotonic()
        m = self.msg(uid("x"), "pipelined")
        first = reader.read_response()
        elapsed = time.monotonic() - t0
        second = reader.read_response()
        self.assertEqual(result_of(first), [m])
        self.assertLess(elapsed, WAKE_LIMIT)
        names = [c["name"] for c in result_of(second)]
        self.assertIn("general", names)
        self.assertIn("direct", names)

    def test_hub_info_features(self):
        status, headers, payload = self.hub.get("/v1/hub-info")
        self.assertEqual(status, 200)
        self.assertIn("sse", payload["result"]["features"])
        self.assertIn("long_poll_keepalive", payload["result"]["features"])

    def test_latency_probe(self):
        """post -> long-poll wake, 50 times; prints median/p99 (not asserted)."""
        ch = self.channel()
        since = self.mark()
        poster = http.client.HTTPConnection("127.0.0.1", self.hub.port,
                                                                   timeout=10)
        self.addCleanup(poster.close)
        samples = []
        for i in range(50):
            w = Waiter(self.hub.port, qs("/v1/events", agent_id="probe", since_id=since,
                                         channel=ch, timeout=30))
            try:
                self.sync()
                body = json.dumps({"from_agent": "x", "channel": ch, "body": "p%d" % i})
                t0 = time.perf_counter()
                poster.request("POST", "/v1/messages", body=body,
                               headers={"Content-Type": "application/json"})
                result = w.result(timeout=10)
                t1 = time.perf_counter()
                resp = poster.getresponse()
                m = json.loads(resp.read())["result"]
            finally:
                w.close()
            self.assertEqual(result, [m])
            since = m["id"]
            samples.append((t1 - t0) * 1000)
        samples.sort()
        p99 = samples[min(len(samples) - 1, int(round(0.99 * len(samples))) - 1)]
        print("\n    post->wake latency over %d runs: median %.3f ms, p99 %.3f ms, max %.3f ms"
              % (len(samples), statistics.median(samples), p99, samples[-1]))


# ── server-sent events ──────────────────────────────────────────────────

@arc_only
class StreamTests(Case):

    def test_headers_backlog_and_live(self):
        ch = self.channel()
        since = self.mark()
        backlog = [self.msg("p", "b%d" % i, channel=ch) for i in range(3)]
        s = self.stream(agent_id=uid("x"), channels=ch, since_id=since)
        self.assertIn("text/event-stream", s.headers.get("content-type", ""))
        status, _, info = self.hub.get("/v1/hub-info")
        self.assertEqual(s.headers.get("x-arc-instance"), info["result"]["instance_id"])
        for m in backlog:
            self.assertEqual(s.next_event(), m)
        for i in range(3):
            t0 = time.monotonic()
            m = self.msg("p", "live%d" % i, channel=ch)
            self.assertEqual(s.next_event(timeout=WAKE_LIMIT + 1), m)
            self.assertLess(time.monotonic() - t0, WAKE_LIMIT)

    def test_since_id_replays_exactly_later_ids(self):
        ch = self.channel()
        m1, m2, m3 = (self.msg("p", "r%d" % i, channel=ch) for i in range(3))
        s = self.stream(agent_id=uid("x"), channels=ch, since_id=m1["id"])
        self.assertEqual(s.next_event(), m2)
        self.assertEqual(s.next_event(), m3)
        sentinel = self.msg("p", "sentinel", channel=ch)
        self.assertEqual(s.next_event(), sentinel)

    def test_last_event_id_header(self):
        ch = self.channel()
        m1, m2, m3 = (self.msg("p", "l%d" % i, channel=ch) for i in range(3))
        s = self.stream(agent_id=uid("x"), channels=ch, headers=[("Last-Event-ID", str(m2["id"]))])
        self.assertEqual(s.next_event(), m3)
        sentinel = self.msg("p", "sentinel", channel=ch)
        self.assertEqual(s.next_event(), sentinel)
        # the header wins over since_id
        s2 = self.stream(agent_id=uid("x"), channels=ch, since_id=0,
                         headers=[("Last-Event-ID", str(m2["id"]))])
        self.assertEqual(s2.next_event(), m3)
        self.assertEqual(s2.next_event(), sentinel)

    def test_channels_filter(self):
        a, b, c = self.channel(), self.channel(), self.channel()
        since = self.mark()
        ma = self.msg("p", "in a", channel=a)
        self.msg("p", "in c", channel=c)
        s = self.stream(agent_id=uid("x"), channels="%s,,%s" % (a, b), since_id=since)
        self.assertEqual(s.next_event(), ma)
        self.msg("p", "in c again", channel=c)
        mb = self.msg("p", "in b", channel=b)
        self.assertEqual(s.next_event(), mb)
        ma2 = self.msg("p", "in a again", channel=a)
        self.assertEqual(s.next_event(), ma2)

    def test_exclude_self(self):
        ch = self.channel()
        x = uid("x")
        since = self.mark()
        self.msg(x, "mine, backlog", channel=ch)
        other = self.msg("y", "theirs, backlog", channel=ch)
        s = self.stream(agent_id=x, channels=ch, since_id=since, exclude_self=1)
        self.assertEqual(s.next_event(), other)
        self.msg(x, "mine, live", channel=ch)
        sentinel = self.msg("y", "theirs, live", channel=ch)
        self.assertEqual(s.next_event(), sentinel)

    def test_direct_messages_to_others_excluded(self):
        x = uid("x")
        since = self.mark()
        s = self.stream(agent_id=x, since_id=since)
        self.msg("y", "for z", to_agent=uid("z"), channel="direct")
        dm = self.msg("y", "for x", to_agent=x, channel="direct")
        self.assertEqual(s.next_event(), dm)
        self.msg("y", "for z again", to_agent=uid("z"), channel="general")
        sentinel = self.msg("y", "everyone", channel="general")
        self.assertEqual(s.next_event(), sentinel)

    def test_channels_filter_backlog_past_many_other_rows(self):
        # The backlog of a stream filtered to several channels must not stop
        # at rows of other channels: 300 messages elsewhere, then 5 wanted.
        want, want2, other = self.channel(), self.channel(), self.channel()
        since = self.mark()
        for i in range(300):
            self.msg("p", "noise %d" % i, channel=other)
        wanted = [self.msg("p", "wanted %d" % i, channel=(want, want2)[i % 2]) for i in range(5)]
        s = self.stream(agent_id=uid("x"), channels="%s,%s" % (want, want2), since_id=since)
        sentinel = self.msg("p", "live sentinel", channel=want)
        got = []
        while True:
            ev = s.next_event(timeout=3)
            got.append(ev["id"])
            if ev["id"] == sentinel["id"]:
                break
        self.assertEqual(got, [m["id"] for m in wanted] + [sentinel["id"]])

    def test_keepalive_comment(self):
        ch = self.channel()
        s = self.stream(agent_id=uid("x"), channels=ch, since_id=self.mark())
        t0 = time.monotonic()
        while True:
            frame = s.next_block(timeout=max(0.001, 17.5 - (time.monotonic() - t0)))
            self.assertIsNotNone(frame, "stream closed while idle")
            self.assertIsNone(frame["data"], "unexpected event %r" % frame)
            if frame["comments"]:
                break
        elapsed = time.monotonic() - t0
        self.assertTrue(frame["comments"][0].startswith(":"))
        self.assertIn("keepalive", frame["comments"][0])
        self.assertLess(elapsed, 17.0)
        print("\n    keepalive after %.1f s" % elapsed)
        # still live afterwards
        m = self.msg("p", "after keepalive", channel=ch)
        self.assertEqual(s.next_event(), m)

    def test_slow_reader_dropped_without_harm(self):
        ch = self.channel()
        since = self.mark()
        port = self.hub.port
        # the slow client: a tiny receive buffer and it never reads
        slow = SSE(port, qs("/v1/stream", agent_id=uid("slow"), channels=ch, since_id=since),
                   rcvbuf=4096, timeout=30)
        self.addCleanup(slow.close)
        # a normal client that keeps reading
        fast = SSE(port, qs("/v1/stream", agent_id=uid("fast"), channels=ch, since_id=since),
                   timeout=60)
        self.addCleanup(fast.close)
        fast.read_head()
        chunks = []

        def drain():
            try:
                while True:
                    data = fast.sock.recv(1 << 20)
                    if not data:
                        return
                    chunks.append(data)
            except OSError:
                return

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        self.sync()

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(conn.close)
        big = "x" * 50000
        posted, worst_post, worst_get = [], 0.0, 0.0
        for i in range(200):
            t0 = time.monotonic()
            conn.request("POST", "/v1/messages",
                         body=json.dumps({"from_agent": "p", "channel": ch,
                                          "body": "%04d %s" % (i, big)}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            self.assertEqual(resp.status, 201, payload)
            posted.append(payload["result"]["id"])
            worst_post = max(worst_post, time.monotonic() - t0)
            if i % 20 == 0:
                t0 = time.monotonic()
                status, _, _ = self.hub.get("/v1/channels")
                self.assertEqual(status, 200)
                worst_get = max(worst_get, time.monotonic() - t0)
        self.assertLess(worst_post, 2.0, "a post took %.3fs" % worst_post)
        self.assertLess(worst_get, 2.0, "a get took %.3fs" % worst_get)

        # the slow client was cut off: it sees EOF before all 200 events
        self.assertTrue(slow.wait_eof(timeout=20), "slow reader was not disconnected")
        slow.read_head()
        slow_ids = []
        while True:
            frame = slow.next_block(timeout=1)
            if frame is None:
                break
            if frame["data"] is not None:
                slow_ids.append(frame["id"])
        self.assertLess(len(slow_ids), 200)
        self.assertEqual(slow_ids, posted[:len(slow_ids)])

        # the normal client got every event, in order
        def fast_ids():
            blob = b"".join(chunks)
            return [int(line[3:]) for line in blob.split(b"\n") if line.startswith(b"id:")]
        wait_for(lambda: len(fast_ids()) >= 200, timeout=20,
                 msg="normal stream reader did not receive all 200 events")
        self.assertEqual(fast_ids(), posted)

        # reconnecting with Last-Event-ID picks up exactly the rest
        last = slow_ids[-1] if slow_ids else since
        again = SSE(port, qs("/v1/stream", agent_id=uid("slow"), channels=ch),
                    headers=[("Last-Event-ID", str(last))], timeout=30)
        self.addCleanup(again.close)
        again.read_head()
        rest = []
        while len(rest) < len(posted) - len(slow_ids):
            ev = again.next_event(timeout=10)
            self.assertIsNotNone(ev)
            rest.append(ev["id"])
        self.assertEqual(rest, posted[len(slow_ids):])
        self.assertTrue(self.hub.alive())
        print("\n    slow reader cut after %d of 200 events; worst post %.1f ms, worst get %.1f ms"
              % (len(slow_ids), worst_post * 1000, worst_get * 1000))


# ── presence while waiting ──────────────────────────────────────────────

@arc_only
class PresenceTests(Case):
    hub_args = ("--presence-ttl", "6")

    def test_long_poll_keeps_agent_present(self):
        w_agent, idle = uid("w"), uid("idle")
        self.session(w_agent)
        self.session(idle)
        t0 = time.monotonic()
        since = self.mark()
        w = self.waiter(qs("/v1/events", agent_id=w_agent, since_id=since,
                           channel=self.channel(), timeout=20))
        self.sync()
        self.assertParked(w)

        def live():
            return {a["agent_id"] for a in self.assertOk(self.hub.get("/v1/agents"))}

        # the idle agent expires after the TTL (6 s) plus at most one tick
        # (2 s); all along, the waiting agent stays present
        def idle_gone():
            names = live()
            self.assertIn(w_agent, names, "waiting agent expired after %.1fs"
                          % (time.monotonic() - t0))
            return idle not in names
        wait_for(idle_gone, timeout=12, interval=0.5, msg="idle agent never expired")
        expired_after = time.monotonic() - t0
        self.assertGreaterEqual(expired_after, 5.5)
        # keep watching until the waiter has outlived the TTL comfortably
        while time.monotonic() - t0 < 10:
            self.assertIn(w_agent, live())
            time.sleep(0.5)
        self.assertTrue(w.pending(), "long-poll answered early")
        self.assertIn(w_agent, live())
        self.assertNotIn(idle, live())


# ── several hubs on one storage file ────────────────────────────────────

@arc_only
class TwoHubTests(Case):

    def test_post_through_other_hub_wakes_waiters(self):
        other = Hub()
        self.addCleanup(other.stop)
        other.start(storage=self.hub.storage)
        ch = self.channel()
        since = self.mark()
        w = self.waiter(qs("/v1/events", agent_id=uid("b"), since_id=since, timeout=30,
                           channel=ch))
        s = self.stream(agent_id=uid("s"), channels=ch, since_id=since)
        self.sync()
        self.assertParked(w)
        t0 = time.monotonic()
        status, _, payload = other.post("/v1/messages", {"from_agent": "remote", "channel": ch,
                                                         "body": "via the other hub"})
        self.assertEqual(status, 201, payload)
        m = payload["result"]
        result = w.result(timeout=10)
        woke = w.answered - t0
        self.assertEqual(result, [m])
        self.assertLess(woke, FOREIGN_WAKE_LIMIT, "long-poll woke after %.3fs" % woke)
        self.assertEqual(s.next_event(timeout=FOREIGN_WAKE_LIMIT), m)
        self.assertLess(time.monotonic() - t0, FOREIGN_WAKE_LIMIT + 0.2)
        print("\n    foreign post woke the long-poll after %.1f ms" % (woke * 1000))


# ── large fan-outs: answers written by the sender threads ───────────────

@arc_only
class ParallelFanoutTests(Case):
    """A post that wakes 256 or more waiters has its answers written by
    sender threads (arc.c, "parallel sends"); every kind of waiter must get
    exactly what a small fan-out gives it."""

    N = 400   # waiters; ARC_SEND_MIN is 256

    def test_every_kind_of_waiter_answered_once(self):
        since = self.mark()
        ch, other = self.channel(), self.channel()
        kinds = []
        for i in range(self.N):
            k = ("events", "messages", "close", "pipelined")[i % 4]
            path = (qs("/v1/messages", channel=ch, since_id=since, timeout=30) if k == "messages"
                    else qs("/v1/events", agent_id="p%03d-%s" % (i, ch), since_id=since,
                            channel=ch, timeout=30))
            if k == "close":        # answered, then closed by the hub
                w = self.waiter_raw(http_get(path, [("Connection", "close")]))
            else:
                w = self.waiter(path)
            if k == "pipelined":    # a second request behind the parked one
                w.sock.sendall(http_get("/v1/hub-info"))
            kinds.append((k, w))
        quiet = [self.waiter(qs("/v1/events", agent_id=uid("q%d" % i), since_id=since,
                                channel=other, timeout=30)) for i in range(20)]
        gone = [self.waiter(qs("/v1/events", agent_id=uid("g%d" % i), since_id=since,
                               channel=ch, timeout=30), linger_rst=True) for i in range(20)]
        streams = [self.stream(agent_id=uid("s%d" % i), channels=ch, since_id=since)
                   for i in range(10)]
        self.sync()
        for w in gone:
            w.close()             # reset before the post: written to and dropped
        self.sync()
        self.assertTrue(all(w.pending() for _, w in kinds))
        t0 = time.monotonic()
        m = self.msg(uid("x"), "to many", channel=ch)
        for k, w in kinds:
            self.assertEqual(w.result(timeout=10), [m], k)
            if k == "pipelined":
                self.assertEqual(result_of(w.reader.read_response())["implementation"], "arc")
            if k == "close":
                w.sock.settimeout(5)
                self.assertEqual(w.sock.recv(1), b"", "the hub kept a Connection: close open")
        elapsed = max(w.answered for _, w in kinds) - t0
        for s in streams:
            self.assertEqual(s.next_event(timeout=10), m)
        self.assertTrue(all(w.pending() for w in quiet))
        # the next post on the other channel wakes only those, once
        m2 = self.msg(uid("x"), "to the few", channel=other)
        for w in quiet:
            self.assertEqual(w.result(timeout=10), [m2])
        for s in streams:
            with self.assertRaises(socket.timeout):
                s.next_event(timeout=0.2)
        self.assertTrue(self.hub.alive())
        print("\n    %d waiters woken; last answer read %.1f ms after the post"
              % (self.N, elapsed * 1000))

    def test_foreign_commit_wakes_them_all(self):
        other = Hub()
        self.addCleanup(other.stop)
        other.start(storage=self.hub.storage)
        since = self.mark()
        ch = self.channel()
        waiters = [self.waiter(qs("/v1/events", agent_id="f%03d-%s" % (i, ch), since_id=since,
                                  channel=ch, timeout=30)) for i in range(300)]
        self.sync()
        status, _, payload = other.post("/v1/messages", {"from_agent": "remote", "channel": ch,
                                                         "body": "via the other hub"})
        self.assertEqual(status, 201, payload)
        for w in waiters:
            self.assertEqual(w.result(timeout=10), [payload["result"]])

    def waiter_raw(self, request):
        w = Waiter.__new__(Waiter)
        w.timeout = 75
        w.sock = connect(self.hub.port, 75)
        w.sock.sendall(request)
        w.sent = time.monotonic()
        w.reader = HTTPReader(w.sock, 75)
        w.answered = None
        self.addCleanup(w.close)
        return w


# ── shutdown ────────────────────────────────────────────────────────────

@arc_only
class ShutdownTests(unittest.TestCase):

    def new_hub(self):
        hub = Hub().start()
        self.addCleanup(hub.stop)
        return hub

    def general(self, hub):
        status, _, payload = hub.get("/v1/messages", channel="general", limit=500)
        self.assertEqual(status, 200, payload)
        return payload["result"]

    def test_post_shutdown_with_delay_answers_waiter_and_exits(self):
        hub = self.new_hub()
        hub.post("/v1/channels", {"name": "quiet"})
        w = Waiter(hub.port, qs("/v1/events", agent_id="b", channel="quiet", timeout=30))
        self.addCleanup(w.close)
        hub.get("/v1/hub-info")
        self.assertTrue(w.pending())
        status, _, payload = hub.post("/v1/shutdown", {"delay_sec": 1})
        self.assertEqual(status, 200, payload)
        self.assertEqual(payload["result"]["status"], "shutdown_initiated")
        self.assertEqual(payload["result"]["delay_sec"], 1)
        t0 = time.monotonic()
        resp = w.response(timeout=10)
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.json(), {"ok": True, "result": []})
        code = hub.wait_exit(timeout=5)
        self.assertEqual(code, 0, hub.log_text()[-2000:])
        self.assertLess(time.monotonic() - t0, 5)
        hub.restart()
        notices = [(m["body"], m["from_agent"], m["kind"], m["metadata"]) for m in self.general(hub)]
        self.assertIn(("Hub shutdown initiated. Shutting down in 1 seconds.", "system", "notice",
                       {"shutdown": True, "delay_sec": 1}), notices)
        self.assertIn(("Hub is shutting down now.", "system", "notice",
                       {"shutdown": True, "final": True}), notices)

    def test_sigterm_answers_waiters_closes_streams_and_keeps_data(self):
        hub = self.new_hub()
        status, _, payload = hub.post("/v1/messages", {"from_agent": "a", "body": "keep me"})
        self.assertEqual(status, 201)
        kept = payload["result"]
        w = Waiter(hub.port, qs("/v1/events", agent_id="b", since_id=kept["id"], timeout=30))
        self.addCleanup(w.close)
        s = SSE(hub.port, qs("/v1/stream", agent_id="s", since_id=kept["id"]))
        self.addCleanup(s.close)
        s.read_head()
        hub.get("/v1/hub-info")
        self.assertTrue(w.pending())
        hub.proc.send_signal(signal.SIGTERM)
        resp = w.response(timeout=10)
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.json(), {"ok": True, "result": []})
        self.assertTrue(s.wait_eof(timeout=10), "stream not closed on SIGTERM")
        self.assertEqual(hub.wait_exit(timeout=10), 0, hub.log_text()[-2000:])
        # the main file alone (no -wal beside it) already holds the message
        copy_dir = tempfile.mkdtemp(prefix="arc-db-copy-")
        self.addCleanup(shutil.rmtree, copy_dir, True)
        copy = os.path.join(copy_dir, "copy.sqlite3")
        shutil.copyfile(hub.storage, copy)
        db = sqlite3.connect(copy)
        try:
            rows = db.execute("SELECT body FROM messages WHERE id=?", (kept["id"],)).fetchall()
        finally:
            db.close()
        self.assertEqual(rows, [("keep me",)])
        wal = hub.storage + "-wal"
        wal_size = os.path.getsize(wal) if os.path.exists(wal) else 0
        self.assertEqual(wal_size, 0, "-wal left behind with %d bytes" % wal_size)
        hub.restart()
        self.assertIn(kept, self.general(hub))

    def test_cancelled_shutdown_keeps_running(self):
        hub = self.new_hub()
        status, _, payload = hub.post("/v1/shutdown", {"delay_sec": 1})
        self.assertEqual(status, 200, payload)
        t0 = time.monotonic()
        status, _, payload = hub.post("/v1/shutdown/cancel", {})
        self.assertEqual(status, 200, payload)
        self.assertEqual(payload["result"], {"status": "shutdown_cancelled"})
        status, _, payload = hub.get("/v1/shutdown")
        self.assertEqual(payload["result"], None)
        # outlive the cancelled deadline: the process stays up and answers
        while time.monotonic() - t0 < 2.0:
            self.assertTrue(hub.alive(), "hub exited after the cancel")
            time.sleep(0.1)
        self.assertEqual(hub.get("/v1/hub-info")[0], 200)
        notices = [(m["body"], m["metadata"]) for m in self.general(hub) if m["from_agent"] == "system"]
        self.assertIn(("Hub shutdown cancelled.", {"shutdown_cancelled": True}), notices)
        self.assertNotIn("Hub is shutting down now.", [b for b, _ in notices])
        status, _, payload = hub.post("/v1/shutdown/cancel", {})
        self.assertEqual(status, 400)


if __name__ == "__main__":
    unittest.main()
