"""Shared harness for the arc integration tests.

The hub under test is started as a real child process on a free loopback
port with a private temporary storage directory, and is spoken to over
plain sockets / http.client only.

Environment:
  ARC       command that runs the hub (shell-split); default: ../arc
            relative to this file.
  ARC_REF   set to "1" when the hub under test is the Python reference
            implementation; tests decorated with @arc_only are skipped.
  ARC_KEEP  set to "1" to keep hub temp directories (logs, storage) after
            the tests finish.
  ARC_REF_PY  the reference's arc.py (default /tmp/ref/arc.py) for the
            interoperability tests, which skip without it.
ARC_TOKEN is removed from the environment: a token set by the caller would
be required by every hub and command the tests start.
"""

import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.pop("ARC_TOKEN", None)
REF = os.environ.get("ARC_REF", "") == "1"
KEEP = os.environ.get("ARC_KEEP", "") == "1"

START_DEADLINE = 10.0
STOP_DEADLINE = 10.0
POLL_INTERVAL = 0.02


def arc_only(obj):
    """Skip a test (or class) when the hub under test is the reference."""
    return unittest.skipIf(REF, "arc-only behaviour (the reference hub differs)")(obj)


def hub_command():
    env = os.environ.get("ARC")
    if env:
        return shlex.split(env)
    return [os.path.abspath(os.path.join(HERE, "..", "arc"))]


def reference_py():
    """The reference hub's arc.py for the interoperability tests:
    $ARC_REF_PY, else /tmp/ref/arc.py; None when neither exists."""
    path = os.environ.get("ARC_REF_PY") or "/tmp/ref/arc.py"
    return path if os.path.exists(path) else None


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def uid(prefix="t"):
    """A short unique name so tests sharing one hub do not collide."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def wait_for(cond, timeout=10.0, interval=0.05, msg=None):
    """Poll cond() until it returns a truthy value; return that value.

    Raises AssertionError when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(msg or "condition not met within %.1fs" % timeout)
        time.sleep(interval)


# ── HTTP helpers ────────────────────────────────────────────────────────

def encode_body(body):
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def _decode_payload(data, content_type):
    text = data.decode("utf-8", errors="replace")
    if "json" in (content_type or "").lower():
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def request(port, method, path, body=None, raw_body=None, headers=None, timeout=10):
    """One request on a fresh http.client connection.

    Returns (status, headers_dict_lowercase, parsed_json_or_text).
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        data = None
        if raw_body is not None:
            data = raw_body
        elif body is not None:
            data = encode_body(body)
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        rh = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, rh, _decode_payload(payload, rh.get("content-type"))
    finally:
        conn.close()


def qs(path, **params):
    """Build path?query from keyword params (None values dropped)."""
    items = [(k, v) for k, v in params.items() if v is not None]
    if not items:
        return path
    return path + "?" + urllib.parse.urlencode(items)


class Response:
    def __init__(self, version, status, reason, header_list, body):
        self.version = version
        self.status = status
        self.reason = reason
        self.header_list = header_list
        self.headers = {k.lower(): v for k, v in header_list}
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Response %s %s %r>" % (self.version, self.status, self.body[:200])


class HTTPReader:
    """Reads HTTP/1.x responses one at a time from a connected socket.

    Bytes beyond the current response stay buffered, so pipelined and
    keep-alive responses can be read in sequence.
    """

    def __init__(self, sock, timeout=10):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""
        self.eof = False
        self.reset = False

    def _fill(self):
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            data = b""
            self.reset = True
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_response(self):
        """Return the next Response, or None if the peer closed first."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                if not self.buf:
                    return None
                raise AssertionError("connection closed inside response head: %r" % self.buf[:300])
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("iso-8859-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise AssertionError("bad status line: %r" % lines[0])
        version, status = parts[0], int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        header_list = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            header_list.append((name.strip(), value.strip()))
        hdrs = {k.lower(): v for k, v in header_list}
        if "content-length" in hdrs:
            n = int(hdrs["content-length"])
            while len(self.buf) < n:
                if not self._fill():
                    raise AssertionError("connection closed inside response body")
            body, self.buf = self.buf[:n], self.buf[n:]
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return Response(version, status, reason, header_list, body)

    def closed_by_peer(self, timeout=5):
        """True when the peer closes (EOF/reset) with no further bytes."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except socket.timeout:
            return False


def connect(port, timeout=10):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def raw(port, data, until_close=False, timeout=10):
    """Send raw bytes on a fresh socket.

    until_close=False: return the first Response (or None if the hub
    closed without answering).  until_close=True: return the list of all
    responses read until the hub closes the connection.
    Errors while sending (the hub may close early) are tolerated.
    """
    sock = connect(port, timeout)
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reader = HTTPReader(sock, timeout)
        if not until_close:
            return reader.read_response()
        out = []
        while True:
            r = reader.read_response()
            if r is None:
                return out
            out.append(r)
    finally:
        sock.close()


# ── Hub process ─────────────────────────────────────────────────────────

# Sanitizer findings in any hub's log (make asan): collected here and
# reported by tests/pyrun.py, which fails the run if there are any.
SANITIZER_REPORTS = []
_SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                      "runtime error:", "ThreadSanitizer")


def check_sanitizer_log(text):
    for marker in _SANITIZER_MARKERS:
        i = text.find(marker)
        if i >= 0:
            SANITIZER_REPORTS.append(text[max(0, i - 200):i + 3000])
            return


class Hub:
    """A hub child process on a free port with its own temp directory.

    With token=T the hub is started with ARC_TOKEN=T, and its request
    helpers send "Authorization: Bearer T" unless given one. preexec_fn
    runs in the child before exec (resource limits).
    """

    def __init__(self, cmd=None, token=None, preexec_fn=None):
        self.cmd = list(cmd) if cmd else hub_command()
        self.token = token
        self.preexec_fn = preexec_fn
        self.proc = None
        self.port = None
        self.url = None
        self.dir = None
        self.storage = None
        self.extra_args = []
        self._logf = None
        self._own_dir = False
        self._next_port = None   # this start's fixed port, if any

    # lifecycle
    def start(self, extra_args=(), storage=None, port=None):
        """Start on a free port, or on `port` (a restarted hub that clients
        and pages already know)."""
        self._next_port = port
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="arc-test-")
            self._own_dir = True
        self.extra_args = list(extra_args)
        self.storage = os.path.abspath(storage) if storage else os.path.join(self.dir, "arc.sqlite3")
        last_error = None
        for _attempt in range(3):  # tolerate a lost race for the free port
            try:
                self._spawn()
                return self
            except _PortLost as e:
                last_error = e
        raise AssertionError("hub did not start: %s" % last_error)

    def _spawn(self):
        self.port = self._next_port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        argv = self.cmd + [
            "--host", "127.0.0.1", "--port", str(self.port),
            "--storage", self.storage,
            "--spool-dir", os.path.join(self.dir, "spool"),
            "--quiet",
        ] + [str(a) for a in self.extra_args]
        self._logf = open(self.log_path, "ab")
        self._logf.write(("\n$ %s\n" % " ".join(shlex.quote(a) for a in argv)).encode())
        self._logf.flush()
        env = dict(os.environ, ARC_TOKEN=self.token) if self.token else None
        self.proc = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.dir, env=env,
                                     preexec_fn=self.preexec_fn)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self.proc.poll() is not None:
                self._close_log()
                log = self.log_text()
                if "in use" in log.lower():
                    raise _PortLost(log[-2000:])
                raise AssertionError("hub exited with %s during startup:\n%s"
                                     % (self.proc.returncode, log[-4000:]))
            try:
                status, _, _ = self.request("GET", "/v1/hub-info", timeout=2)
                if status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() >= deadline:
                self.kill()
                raise AssertionError("hub did not answer /v1/hub-info within %.0fs:\n%s"
                                     % (START_DEADLINE, self.log_text()[-4000:]))
            time.sleep(POLL_INTERVAL)

    @property
    def log_path(self):
        return os.path.join(self.dir, "hub.log")

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout=STOP_DEADLINE):
        """Wait for the process to end on its own; return its exit code or None."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def stop_process(self):
        """SIGTERM, wait up to 10 s, then SIGKILL. Keeps the temp dir."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def stop(self):
        """Stop the process and remove the temp dir. Asserts nothing."""
        self.stop_process()
        self.cleanup()

    def cleanup(self):
        if self._own_dir and self.dir and not KEEP:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def restart(self, extra_args=None, same_port=False):
        """Stop and start again on the same storage: on a new port, or with
        same_port on the one it had (clients and pages that know it)."""
        port = self.port if same_port else None
        self.stop_process()
        return self.start(self.extra_args if extra_args is None else extra_args,
                          storage=self.storage, port=port)

    def _close_log(self):
        if self._logf is not None:
            self._logf.close()
            self._logf = None
            check_sanitizer_log(self.log_text())

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # requests
    def request(self, method, path, body=None, raw_body=None, headers=None, timeout=10):
        headers = dict(headers or {})
        if self.token and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = "Bearer " + self.token
        return request(self.port, method, path, body=body, raw_body=raw_body,
                       headers=headers, timeout=timeout)

    def get(self, path, http_timeout=10, **params):
        """GET path with query params (a `timeout` kwarg is a query param)."""
        return self.request("GET", qs(path, **params), timeout=http_timeout)

    def post(self, path, body=None, timeout=10):
        return self.request("POST", path, body={} if body is None else body, timeout=timeout)

    def delete(self, path):
        return self.request("DELETE", path)

    def raw(self, data, until_close=False, timeout=10):
        return raw(self.port, data, until_close=until_close, timeout=timeout)


def hand_over(test, hub, ref=False, extra_args=()):
    """Stop hub's process and start the next hub on its storage file: the
    reference's arc.py with ref, else arc with extra_args. The new hub is
    stopped (its temp dir removed) at test's cleanup; cleanups run last
    first, so the first hub, whose dir holds the file, goes last when its
    stop was registered first."""
    hub.stop_process()
    nxt = Hub(cmd=[sys.executable, reference_py()] if ref else None)
    test.addCleanup(nxt.stop)
    return nxt.start(extra_args, storage=hub.storage)


def proc_cpu_seconds(pid):
    """User + system CPU time of process pid so far, in seconds (Linux)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid):
    """Resident set size of process pid, in KiB (Linux)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _PortLost(Exception):
    pass


# ── TestCase base ───────────────────────────────────────────────────────

class HubCase(unittest.TestCase):
    """One hub per TestCase class; subclasses may set hub_args."""

    hub_args = ()
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.hub = Hub().start(cls.hub_args)

    @classmethod
    def tearDownClass(cls):
        hub = cls.__dict__.get("hub")
        if hub is not None:
            hub.stop()
        super().tearDownClass()

    # envelope assertions
    def assertOk(self, resp, status=200):
        code, headers, payload = resp
        self.assertEqual(code, status, "unexpected status; payload=%r" % (payload,))
        self.assertIsInstance(payload, dict, payload)
        self.assertIs(payload.get("ok"), True, payload)
        self.assertIn("result", payload)
        self.assertIn("application/json", headers.get("content-type", ""))
        self.assertIn("content-length", headers)
        return payload["result"]

    def assertErr(self, resp, status):
        code, headers, payload = resp
        self.assertEqual(code, status, "unexpected status; payload=%r" % (payload,))
        self.assertIsInstance(payload, dict, payload)
        self.assertIs(payload.get("ok"), False, payload)
        self.assertIsInstance(payload.get("error"), str, payload)
        self.assertTrue(payload["error"], payload)
        self.assertNotIn("result", payload)
        self.assertIn("application/json", headers.get("content-type", ""))
        self.assertIn("content-length", headers)
        return payload["error"]

    def assertTimestamp(self, value):
        self.assertIsInstance(value, str)
        self.assertTrue(value.endswith("Z"), value)
        parse_ts(value)

    # shortcuts
    def session(self, agent_id=None, **fields):
        agent_id = agent_id or uid("agent")
        body = {"agent_id": agent_id}
        body.update(fields)
        return self.assertOk(self.hub.post("/v1/sessions", body), 201)

    def channel(self, name=None, **fields):
        name = name or uid("ch")
        body = {"name": name}
        body.update(fields)
        self.assertOk(self.hub.post("/v1/channels", body), 201)
        return name

    def msg(self, from_agent="poster", body="hello", **fields):
        payload = {"from_agent": from_agent, "body": body}
        payload.update(fields)
        return self.assertOk(self.hub.post("/v1/messages", payload), 201)


def parse_ts(value):
    from datetime import datetime
    return datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
