"""Hostile and broken clients (PROTOCOL §4.1, §4.3, §4.4).

Slow heads and bodies are timed out with 408 without delaying anyone else,
idle keep-alive connections are closed, connections beyond --max-conns and
beyond the open-file limit get 503 at once without the loop spinning, and
clients that stop reading (event streams, big responses, pipelined
requests) are bounded and dropped. The hubs here run with short timeouts
(--head-timeout-ms and friends) so that the tests take seconds.

Latency under 1,000 slow connections is measured and written to
tests/out/hostile-latency.txt, never asserted (timing is for make bench).
"""

import os
import resource
import select
import socket
import struct
import threading
import time
import unittest

from hubtest import (HERE, Hub, HTTPReader, arc_only, connect, proc_cpu_seconds,
                     proc_rss_kib, request, uid, wait_for)
from test_relay import RelayClient

OUT = os.path.join(HERE, "out")


def raise_nofile(need):
    """Raise this process's open-file soft limit; False if it cannot reach need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        return False
    if soft == resource.RLIM_INFINITY or soft >= need:
        return True
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return True


def small_rcvbuf_socket(port, size=4096):
    """A connection whose receive buffer stays small (no autotuning)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def drain_until_closed(sock, timeout):
    """Read until EOF or reset; return (bytes read, closed?)."""
    total = 0
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], 0.2)
        if not r:
            continue
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        except (ConnectionResetError, ConnectionAbortedError):
            return total, True
        if not data:
            return total, True
        total += len(data)
    return total, False


def hub_holds(hub_port, client_sock):
    """Does the hub still hold its end of client_sock's connection?

    Read from /proc/net/tcp: once the hub closes the socket, its end is
    gone, or left to the kernel (inode 0) to flush, even when unsent data
    keeps the FIN from reaching a client that does not read."""
    want = ":%04X" % hub_port
    peer = ":%04X" % client_sock.getsockname()[1]
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(want) and fields[2].endswith(peer):
                        return fields[9] != "0"
        except OSError:
            pass
    return False


def get_latency(conn_sock, reader, path="/v1/hub-info"):
    """One keep-alive GET on a raw socket: (status, seconds)."""
    t0 = time.perf_counter()
    conn_sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode())
    resp = reader.read_response()
    return resp.status, time.perf_counter() - t0


def make_channel(hub):
    name = uid("ch")
    status, _, payload = hub.post("/v1/channels", {"name": name})
    assert status == 201, payload
    return name


def fresh_latency(port):
    """One GET on a new connection (what http.client users do): seconds."""
    t0 = time.perf_counter()
    status, _, _ = request(port, "GET", "/v1/hub-info", timeout=10)
    assert status == 200, status
    return time.perf_counter() - t0


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


@arc_only
class SlowClientTests(unittest.TestCase):
    """Head, body and idle timeouts, shortened to keep the tests quick."""

    @classmethod
    def setUpClass(cls):
        cls.hub = Hub().start(["--head-timeout-ms", "1500", "--body-timeout-ms", "1500",
                               "--idle-timeout-ms", "2000"])

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()

    def test_head_one_byte_per_second_gets_408_and_never_delays_others(self):
        head = b"GET /v1/hub-info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        s = connect(self.hub.port)
        reader = HTTPReader(s, timeout=10)
        t0 = time.monotonic()
        sent = 0
        others = []
        try:
            while sent < len(head):
                try:
                    s.sendall(head[sent:sent + 1])
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += 1
                # Meanwhile another client is served at once.
                status, _, _ = request(self.hub.port, "GET", "/v1/hub-info", timeout=5)
                others.append(status)
                r, _, _ = select.select([s], [], [], 1.0)
                if r:
                    break
            resp = reader.read_response()
        finally:
            s.close()
        self.assertIsNotNone(resp)
        self.assertEqual(resp.status, 408, resp)
        self.assertEqual(resp.json(), {"ok": False,
                                       "error": "request head not received in time"})
        self.assertEqual(resp.headers.get("connection"), "close")
        self.assertLess(sent, len(head), "the whole head went out before the timeout")
        self.assertTrue(others and all(st == 200 for st in others), others)
        self.assertLess(time.monotonic() - t0, 10)

    def test_trickling_does_not_stretch_the_head_deadline(self):
        # A byte every 0.2 s: progress, but the deadline counts from the
        # first byte, so the 408 comes long before the head could finish.
        head = b"GET /v1/hub-info HTTP/1.1\r\nX-Pad: " + b"a" * 100 + b"\r\n\r\n"
        s = connect(self.hub.port)
        reader = HTTPReader(s, timeout=10)
        try:
            for i in range(len(head)):
                try:
                    s.sendall(head[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    break
                r, _, _ = select.select([s], [], [], 0.2)
                if r:
                    break
            resp = reader.read_response()
        finally:
            s.close()
        self.assertEqual(resp.status, 408)
        self.assertLess(i, 60, "the deadline moved with the trickle")

    def test_body_that_never_finishes_gets_408(self):
        s = connect(self.hub.port)
        reader = HTTPReader(s, timeout=10)
        try:
            s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                      b"application/json\r\nContent-Length: 100\r\n\r\n{\"from_agent\":")
            resp = reader.read_response()
            self.assertTrue(reader.closed_by_peer(timeout=5))
        finally:
            s.close()
        self.assertEqual(resp.status, 408)
        self.assertEqual(resp.json()["error"], "request body not received in time")

    def test_idle_keep_alive_connection_is_closed_silently(self):
        s = connect(self.hub.port)
        reader = HTTPReader(s, timeout=10)
        try:
            s.sendall(b"GET /v1/hub-info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            self.assertEqual(reader.read_response().status, 200)
            t0 = time.monotonic()
            self.assertTrue(reader.closed_by_peer(timeout=8))
            self.assertGreater(time.monotonic() - t0, 1.0)
        finally:
            s.close()

    def test_connection_that_never_sends_is_closed_when_idle(self):
        s = connect(self.hub.port)
        try:
            self.assertTrue(HTTPReader(s).closed_by_peer(timeout=8))
        finally:
            s.close()

    def test_client_reset_mid_response_leaves_the_hub_serving(self):
        ch = make_channel(self.hub)
        for _ in range(10):
            self.assertEqual(self.hub.post("/v1/messages", {
                "from_agent": "big", "channel": ch, "body": "x" * 100000})[0], 201)
        for i in range(20):
            s = small_rcvbuf_socket(self.hub.port)
            # Close with RST (linger 0) while the hub is still writing.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            path = ("/v1/messages?channel=%s&limit=500" % ch if i % 2 == 0
                    else "/v1/stream?agent_id=%s" % uid("r"))
            s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode())
            time.sleep(0.02)
            s.close()
        self.assertEqual(self.hub.get("/v1/hub-info")[0], 200)
        self.assertTrue(self.hub.alive())


@arc_only
class ManySlowClientsTests(unittest.TestCase):
    """1,000 connections sending a head a byte a second: others are served."""

    N_SLOW = 1000

    def setUp(self):
        if not raise_nofile(self.N_SLOW + 200):
            self.skipTest("open-file limit too low for %d connections" % self.N_SLOW)
        self.hub = Hub().start(["--head-timeout-ms", "6000"])

    def tearDown(self):
        self.hub.stop()

    def test_thousand_slow_heads(self):
        port = self.hub.port
        s = connect(port)
        reader = HTTPReader(s, timeout=10)
        idle = []
        for _ in range(100):
            status, dt = get_latency(s, reader)
            self.assertEqual(status, 200)
            idle.append(dt)
        idle_fresh = [fresh_latency(port) for _ in range(50)]

        slow = []
        for _ in range(self.N_SLOW):
            c = connect(port)
            c.sendall(b"GET /v1/hub-info HTTP/1.1\r\nX-Slow: ")
            slow.append(c)
        stop = threading.Event()

        def trickle():
            while not stop.is_set():
                for c in slow:
                    try:
                        c.send(b"a")
                    except OSError:
                        pass
                stop.wait(1.0)

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        loaded, loaded_fresh = [], []
        try:
            t_end = time.monotonic() + 3.0
            while time.monotonic() < t_end and len(loaded) < 300:
                status, dt = get_latency(s, reader)
                self.assertEqual(status, 200)
                loaded.append(dt)
                if len(loaded) % 6 == 0:
                    loaded_fresh.append(fresh_latency(port))
        finally:
            stop.set()
            t.join()
            s.close()

        # Every slow connection is answered 408 and closed.
        got = {}
        deadline = time.monotonic() + 20
        pending = {c.fileno(): c for c in slow}
        bufs = {fd: b"" for fd in pending}
        poller = select.poll()      # select() stops at descriptor 1023
        for fd in pending:
            poller.register(fd, select.POLLIN)
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(500):
                try:
                    data = pending[fd].recv(65536)
                except OSError:
                    data = b""
                if data:
                    bufs[fd] += data
                    continue
                got[fd] = bufs[fd]
                poller.unregister(fd)
                del pending[fd]
        for c in slow:
            c.close()
        self.assertFalse(pending, "%d slow connections still open" % len(pending))
        n408 = sum(1 for b in got.values() if b.startswith(b"HTTP/1.1 408 "))
        self.assertEqual(n408, self.N_SLOW)

        line = ("hostile: GET /v1/hub-info median latency, idle -> with %d slow heads: "
                "keep-alive %.3f -> %.3f ms (x%.2f, n=%d), new connection %.3f -> "
                "%.3f ms (x%.2f, n=%d)\n"
                % (self.N_SLOW, median(idle) * 1e3, median(loaded) * 1e3,
                   median(loaded) / median(idle), len(loaded),
                   median(idle_fresh) * 1e3, median(loaded_fresh) * 1e3,
                   median(loaded_fresh) / median(idle_fresh), len(loaded_fresh)))
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "hostile-latency.txt"), "a") as f:
            f.write(line)
        print("\n" + line.strip(), flush=True)


@arc_only
class ConnectionFloodTests(unittest.TestCase):

    def test_beyond_max_conns_gets_503_and_is_closed(self):
        with Hub().start(["--max-conns", "20"]) as hub:
            held = []
            try:
                for _ in range(20):
                    c = connect(hub.port)
                    rd = HTTPReader(c)
                    c.sendall(b"GET /v1/hub-info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    self.assertEqual(rd.read_response().status, 200)
                    held.append(c)
                # The 21st: a fixed 503, then the hub closes it.
                extra = connect(hub.port)
                rd = HTTPReader(extra)
                resp = rd.read_response()
                self.assertEqual(resp.status, 503)
                self.assertEqual(resp.json(), {"ok": False,
                                               "error": "too many open connections"})
                self.assertEqual(resp.headers.get("connection"), "close")
                self.assertTrue(rd.closed_by_peer(timeout=5))
                extra.close()
                # One held connection goes: a new client is served again.
                held.pop().close()

                def served():
                    try:
                        return request(hub.port, "GET", "/v1/hub-info", timeout=5)[0] == 200
                    except OSError:
                        return False
                wait_for(served, timeout=10)
            finally:
                for c in held:
                    c.close()

    def test_out_of_descriptors_refuses_with_503_without_spinning(self):
        limit = 48

        def low_nofile():
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        hub = Hub(preexec_fn=low_nofile).start()
        held = []
        try:
            relay = RelayClient(os.path.join(hub.dir, "spool"), "starved")
            self.assertEqual(relay.call("GET", "/v1/hub-info")[1]["status"], 200)
            # More connections than the hub has descriptors for, each with a
            # request: served, or refused (503, or a reset when the refusal
            # closed the socket with the request still unread).
            for _ in range(limit + 20):
                c = connect(hub.port)
                c.sendall(b"GET /v1/hub-info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                held.append(c)
            n_ok = n_503 = 0
            for c in held:
                try:
                    resp = HTTPReader(c, timeout=10).read_response()
                except (ConnectionResetError, AssertionError):
                    resp = None
                if resp is not None and resp.status == 200:
                    n_ok += 1
                else:
                    self.assertTrue(resp is None or resp.status == 503, resp)
                    n_503 += 1
            self.assertGreater(n_ok, 10)
            self.assertGreater(n_503, 10)
            # Out of descriptors, a served connection can still create a
            # session (its id needs random bytes: the hub used to die here).
            ok_conn = next(c for c in held if c.fileno() >= 0 and hub_holds(hub.port, c))
            body = b'{"agent_id":"starved"}'
            ok_conn.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                            + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.assertEqual(HTTPReader(ok_conn).read_response().status, 201)
            # A relayed request arriving now (in a directory the relay
            # already watches) cannot be opened: it is left in the spool for
            # later, not answered 400.
            rid = relay.submit("GET", "/v1/hub-info")
            # Knock for 2 s more with every descriptor in use: each knock is
            # answered, and the loop does not spin on the readable listener.
            pid = hub.proc.pid
            cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
            knocks = 0
            while time.monotonic() - t0 < 2.0:
                c = connect(hub.port)
                c.sendall(b"GET /v1/hub-info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                try:
                    resp = HTTPReader(c, timeout=5).read_response()
                except ConnectionResetError:
                    resp = None
                c.close()
                # Refused (503, or reset with the request unread), or served
                # on a descriptor that happened to be free.
                self.assertTrue(resp is None or resp.status in (200, 503), resp)
                knocks += 1
                time.sleep(0.05)
            cpu = proc_cpu_seconds(pid) - cpu0
            wall = time.monotonic() - t0
            print("\nhostile: out of descriptors, hub CPU %.2f s in %.2f s (%d knocks)"
                  % (cpu, wall, knocks), flush=True)
            self.assertLess(cpu, 0.5 * wall, "hub burnt %.2f s CPU in %.2f s" % (cpu, wall))
            self.assertIn("Too many open files", hub.log_text())
            # Descriptors come back: normal service resumes.
            for c in held:
                c.close()
            held = []

            def served():
                try:
                    return request(hub.port, "GET", "/v1/hub-info", timeout=5)[0] == 200
                except OSError:
                    return False
            wait_for(served, timeout=10)
            answer = relay.wait(rid, timeout=15)
            self.assertEqual((answer["status"], answer["ok"]), (200, True), answer)
        finally:
            for c in held:
                c.close()
            hub.stop()


@arc_only
class StalledReaderTests(unittest.TestCase):
    """Clients that stop reading are bounded and dropped."""

    @classmethod
    def setUpClass(cls):
        cls.hub = Hub().start(["--idle-timeout-ms", "2000"])

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()

    def test_stream_that_stops_reading_is_dropped(self):
        s = small_rcvbuf_socket(self.hub.port)
        try:
            s.sendall(("GET /v1/stream?agent_id=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                       % uid("stalled")).encode())
            wait_for(lambda: hub_holds(self.hub.port, s), timeout=5)
            ch = make_channel(self.hub)
            body = "y" * 120000
            posted = 0
            for _ in range(120):   # ~14 MB: past ARC_MAX_OUT and every buffer
                status, _, _ = self.hub.post("/v1/messages", {
                    "from_agent": "writer", "channel": ch, "body": body})
                self.assertEqual(status, 201)
                posted += len(body)
            # The hub drops it without our reading a byte.
            wait_for(lambda: not hub_holds(self.hub.port, s), timeout=20,
                     msg="the stream was never dropped")
            total, closed = drain_until_closed(s, timeout=20)
        finally:
            s.close()
        self.assertTrue(closed)
        self.assertLess(total, posted)
        self.assertEqual(self.hub.get("/v1/hub-info")[0], 200)

    def test_pipelining_without_reading_is_bounded(self):
        ch = make_channel(self.hub)
        for _ in range(40):   # one GET of the channel: ~4.8 MB
            self.assertEqual(self.hub.post("/v1/messages", {
                "from_agent": "big", "channel": ch, "body": "z" * 120000})[0], 201)
        pid = self.hub.proc.pid
        rss0 = proc_rss_kib(pid)
        one = ("GET /v1/messages?channel=%s&limit=500 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
               % ch).encode()
        s = small_rcvbuf_socket(self.hub.port)
        wait_for(lambda: hub_holds(self.hub.port, s), timeout=5)
        s.setblocking(False)
        try:
            data = one * 3000          # would be ~14 GB of answers if unbounded
            sent = 0
            t_end = time.monotonic() + 5
            while sent < len(data) and time.monotonic() < t_end:
                try:
                    sent += s.send(data[sent:sent + 65536])
                except BlockingIOError:
                    time.sleep(0.01)
            # Without our reading a byte, the hub drops the connection
            # (--idle-timeout-ms without write progress); its memory stays
            # bounded meanwhile.
            rss = [0]

            def dropped():
                rss[0] = max(rss[0], proc_rss_kib(pid))
                return not hub_holds(self.hub.port, s)
            wait_for(dropped, timeout=20, msg="the stalled reader was never dropped")
            grown_mib = (rss[0] - rss0) / 1024
            total, closed = drain_until_closed(s, timeout=20)
        finally:
            s.close()
        self.assertLess(grown_mib, 64, "hub grew by %.0f MiB" % grown_mib)
        self.assertTrue(closed)
        self.assertLess(total, 3 * 5 * 1024 * 1024)
        self.assertEqual(self.hub.get("/v1/hub-info")[0], 200)


if __name__ == "__main__":
    unittest.main()
