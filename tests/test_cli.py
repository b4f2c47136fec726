"""Tests for the command-line subcommands of the arc binary: the lifecycle
commands (ensure, status, stop, reset) and the agent commands (post, poll,
whoami), plus help/version.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_cli -v
The binary is taken from $ARC (see hubtest.py). Every command runs with a
temporary working directory and an environment without ARC_URL/ARC_AGENT
unless a test sets them. arc-only: skipped when ARC_REF=1.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hubtest import (KEEP, Hub, arc_only, free_port, hub_command, request, uid,  # noqa: E402
                     wait_for)


def pid_alive(pid):
    """True if pid names a live process (a zombie counts as gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split(":", 1)[1]
    except (FileNotFoundError, ProcessLookupError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def serve_processes(storage):
    """Pids of `arc serve` processes whose command line names storage."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and os.fsencode(storage) in argv and pid_alive(int(name)):
            pids.append(int(name))
    return pids


def hub_answers(url, timeout=2):
    port = int(url.rsplit(":", 1)[1])
    try:
        status, _, payload = request(port, "GET", "/v1/hub-info", timeout=timeout)
        return status == 200 and isinstance(payload, dict) and payload.get("ok") is True
    except OSError:
        return False


class CliCase(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="arc-cli-")
        if not KEEP:
            self.addCleanup(shutil.rmtree, self.dir, True)
        self.pids = set()

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items() if k not in ("ARC_URL", "ARC_AGENT")}
        env.update(extra)
        return env

    def arc(self, *args, cwd=None, env=None, input=None, timeout=60):
        """Run the binary; returns CompletedProcess with text stdout/stderr."""
        return subprocess.run(hub_command() + [str(a) for a in args], cwd=cwd or self.dir,
                              env=env or self.env(), input=input, capture_output=True,
                              text=True, timeout=timeout)

    def ok_json(self, proc, code=0):
        self.assertEqual(proc.returncode, code, "stdout=%r stderr=%r" % (proc.stdout, proc.stderr))
        try:
            return json.loads(proc.stdout)
        except ValueError:
            self.fail("stdout is not one JSON document: %r" % proc.stdout)

    # background hubs started through `arc ensure`
    def remember_hub(self, storage_dir):
        """Note the pid in the pidfile, and make sure it dies at cleanup."""
        pid = self.read_pidfile(storage_dir)["pid"]
        if pid not in self.pids:
            self.pids.add(pid)
            self.addCleanup(self.kill_pid, pid)
        return pid

    @staticmethod
    def kill_pid(pid):
        if not pid_alive(pid):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def read_pidfile(self, storage_dir):
        with open(os.path.join(storage_dir, ".arc.pid")) as f:
            return json.load(f)

    def state(self):
        """(port, storage dir, storage path) for a fresh hub."""
        sdir = os.path.join(self.dir, "state")
        os.makedirs(sdir, exist_ok=True)
        return free_port(), sdir, os.path.join(sdir, "arc.sqlite3")

    def ensure(self, port, storage, *extra):
        proc = self.arc("ensure", "--port", port, "--storage", storage, "--quiet", *extra)
        if os.path.exists(os.path.join(os.path.dirname(storage), ".arc.pid")):
            try:
                self.remember_hub(os.path.dirname(storage))
            except (ValueError, KeyError, OSError):
                pass
        return proc


# ── lifecycle: ensure, status, stop, reset ──────────────────────────────

@arc_only
class LifecycleTests(CliCase):

    def test_ensure_status_stop(self):
        port, sdir, storage = self.state()
        url = "http://127.0.0.1:%d" % port
        out = self.ok_json(self.ensure(port, storage))
        self.assertEqual(out, {"running": True, "started": True, "url": url})
        self.assertTrue(hub_answers(url))

        pf = self.read_pidfile(sdir)
        self.assertEqual(set(pf), {"pid", "port", "url"})
        self.assertEqual(pf["port"], port)
        self.assertEqual(pf["url"], url)
        pid = pf["pid"]
        self.assertTrue(pid_alive(pid))
        self.assertIn(pid, serve_processes(storage))

        t0 = time.monotonic()
        again = self.ensure(port, storage)
        took = time.monotonic() - t0
        print("\n    second ensure took %.1f ms" % (took * 1000))
        self.assertEqual(self.ok_json(again), {"running": True, "started": False, "url": url})
        self.assertEqual(self.read_pidfile(sdir)["pid"], pid)

        st = self.ok_json(self.arc("status", "--port", port, "--storage", storage))
        self.assertIs(st["running"], True)
        self.assertEqual(st["pid"], pid)
        self.assertEqual(st["url"], url)
        self.assertIsInstance(st["uptime_sec"], int)
        self.assertGreaterEqual(st["uptime_sec"], 0)
        self.assertIsInstance(st["agents"], int)
        self.assertEqual(st["storage_path"], os.path.realpath(storage))

        # stop, run from a subdirectory of the storage dir with only --port
        sub = os.path.join(sdir, "sub", "deeper")
        os.makedirs(sub)
        stopped = self.ok_json(self.arc("stop", "--port", port, cwd=sub))
        self.assertIs(stopped["stopped"], True)
        self.assertEqual(stopped["pid"], pid)
        self.assertFalse(pid_alive(pid), "hub pid still alive after stop")
        self.assertFalse(hub_answers(url))
        self.assertFalse(os.path.exists(os.path.join(sdir, ".arc.pid")),
                         "pidfile left behind after a clean stop")

        second = self.arc("stop", "--port", port, cwd=sub)
        self.assertEqual(second.returncode, 1, second)
        self.assertIn("no running hub found", second.stdout + second.stderr)

        st = self.ok_json(self.arc("status", "--port", port, "--storage", storage), code=1)
        self.assertIs(st["running"], False)

    def test_ensure_passes_connection_limits_on(self):
        port, sdir, storage = self.state()
        self.ok_json(self.ensure(port, storage, "--head-timeout-ms", "500",
                                 "--max-conns", "50"))
        # 5 s: well before the default head timeout (10 s) would answer.
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(b"GET /v1/hub-info HTTP/1.1\r\n")      # and nothing more
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)
        self.ok_json(self.arc("stop", "--port", port, "--storage", storage))

    def test_ensure_passes_every_serve_option_on(self):
        """arc ensure rebuilds the hub's argv from the parsed options: all
        16 --allowed-host names (a fixed-size argv once overflowed here;
        run with ARC=arc-asan to see it clean) and the rest arrive."""
        port, sdir, storage = self.state()
        names = ["h%d.lan" % i for i in range(1, 17)]
        tf = os.path.join(sdir, "token")
        with open(tf, "w") as f:
            f.write("t" * 32 + "\n")
        os.chmod(tf, 0o600)
        extra = [a for n in names for a in ("--allowed-host", n)]
        extra += ["--allow-remote", "--sync=normal", "--max-body-chars", "5000",
                  "--presence-ttl", "300", "--spool-dir", os.path.join(sdir, "spool"),
                  "--token-file", tf]
        proc = self.ensure(port, storage, *extra)
        out = self.ok_json(proc)
        self.assertEqual(out["started"], True, out)
        self.assertNotIn("runtime error", proc.stderr)
        self.assertNotIn("Sanitizer", proc.stderr)
        pid = self.read_pidfile(sdir)["pid"]
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0")]
        self.assertEqual([argv[i + 1] for i, a in enumerate(argv) if a == "--allowed-host"],
                         names)
        for opt, val in (("--sync", "normal"), ("--max-body-chars", "5000"),
                         ("--presence-ttl", "300"), ("--port", str(port))):
            self.assertEqual(argv[argv.index(opt) + 1], val, argv)
        self.assertIn("--allow-remote", argv)
        self.assertNotIn("t" * 32, " ".join(argv))      # the token goes by environment
        auth = {"Authorization": "Bearer " + "t" * 32}
        for host, want in (("h16.lan", 200), ("h1.lan:%d" % port, 200), ("h17.lan", 403)):
            with self.subTest(host=host):
                status, _, _ = request(port, "GET", "/v1/channels",
                                       headers=dict(auth, Host=host))
                self.assertEqual(status, want)
        status, _, _ = request(port, "GET", "/v1/channels", headers={"Host": "h16.lan"})
        self.assertEqual(status, 401)
        self.ok_json(self.arc("stop", "--port", port, "--storage", storage, "--token-file", tf))
        with open(os.path.join(sdir, "arc.log")) as f:
            log = f.read()
        self.assertNotIn("runtime error", log)
        self.assertNotIn("Sanitizer", log)

    def test_concurrent_ensure_starts_one_hub(self):
        port, sdir, storage = self.state()
        cmd = hub_command() + ["ensure", "--port", str(port), "--storage", storage, "--quiet"]
        procs = [subprocess.Popen(cmd, cwd=self.dir, env=self.env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, (stdout, stderr))
            outs.append(json.loads(stdout))
        self.remember_hub(sdir)
        self.assertEqual([o["running"] for o in outs], [True, True], outs)
        self.assertEqual(sorted(o["started"] for o in outs), [False, True], outs)
        self.assertEqual(len(serve_processes(storage)), 1, serve_processes(storage))
        self.assertEqual(serve_processes(storage), [self.read_pidfile(sdir)["pid"]])

    def test_stale_pidfile_ignored(self):
        port, sdir, storage = self.state()
        dead_port = free_port()
        stale_pid = 999999
        if pid_alive(stale_pid):
            self.skipTest("pid 999999 happens to be alive")
        stale = {"pid": stale_pid, "port": dead_port, "url": "http://127.0.0.1:%d" % dead_port}
        with open(os.path.join(sdir, ".arc.pid"), "w") as f:
            json.dump(stale, f)

        stop = self.arc("stop", "--port", port, "--storage", storage)
        self.assertEqual(stop.returncode, 1, stop)
        self.assertIn("no running hub found", stop.stdout + stop.stderr)

        out = self.ok_json(self.ensure(port, storage))
        self.assertEqual(out["started"], True)
        self.assertEqual(out["running"], True)
        self.assertEqual(out["url"], "http://127.0.0.1:%d" % port)
        pf = self.read_pidfile(sdir)
        self.assertNotEqual(pf["pid"], stale_pid)
        self.assertEqual(pf["port"], port)
        self.assertTrue(pid_alive(pf["pid"]))
        stopped = self.ok_json(self.arc("stop", "--port", port, "--storage", storage))
        self.assertIs(stopped["stopped"], True)
        self.assertFalse(pid_alive(pf["pid"]))

    def test_pidfile_of_live_process_without_hub_ignored(self):
        # the pid exists (this test process) but its URL answers nothing
        port, sdir, storage = self.state()
        dead_port = free_port()
        with open(os.path.join(sdir, ".arc.pid"), "w") as f:
            json.dump({"pid": os.getpid(), "port": dead_port,
                       "url": "http://127.0.0.1:%d" % dead_port}, f)
        stop = self.arc("stop", "--port", port, "--storage", storage)
        self.assertEqual(stop.returncode, 1, stop)
        self.assertTrue(pid_alive(os.getpid()))
        out = self.ok_json(self.ensure(port, storage))
        self.assertEqual((out["running"], out["started"]), (True, True))
        self.assertNotEqual(self.read_pidfile(sdir)["pid"], os.getpid())

    def test_reset(self):
        port, sdir, storage = self.state()
        url = "http://127.0.0.1:%d" % port
        self.ok_json(self.ensure(port, storage))
        pid = self.read_pidfile(sdir)["pid"]
        status, _, _ = request(port, "POST", "/v1/messages",
                               body={"from_agent": "a", "body": "to be wiped"})
        self.assertEqual(status, 201)

        out = self.ok_json(self.arc("reset", "--port", port, "--storage", storage))
        self.assertIs(out["reset"], True)
        self.assertIn("arc.sqlite3", out["removed"])
        self.assertTrue(set(out["removed"]) <= {"arc.sqlite3", "arc.sqlite3-wal", "arc.sqlite3-shm"},
                        out)
        self.assertFalse(pid_alive(pid))
        self.assertFalse(hub_answers(url))
        for suffix in ("", "-wal", "-shm"):
            self.assertFalse(os.path.exists(storage + suffix), suffix)

        out = self.ok_json(self.arc("reset", "--port", port, "--storage", storage))
        self.assertEqual(out, {"reset": True, "note": "database did not exist"})

        # no hub, but all three files present: all three are removed
        for suffix in ("", "-wal", "-shm"):
            with open(storage + suffix, "wb"):
                pass
        out = self.ok_json(self.arc("reset", "--port", port, "--storage", storage))
        self.assertEqual(sorted(out["removed"]),
                         ["arc.sqlite3", "arc.sqlite3-shm", "arc.sqlite3-wal"])
        for suffix in ("", "-wal", "-shm"):
            self.assertFalse(os.path.exists(storage + suffix), suffix)


# ── agent commands: post, poll, whoami ──────────────────────────────────

@arc_only
class AgentCommandTests(CliCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.hub = Hub().start()

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()
        super().tearDownClass()

    def latest(self):
        status, _, payload = self.hub.get("/v1/bootstrap", agent_id=uid("probe"))
        return payload["result"]["latest_visible_id"]

    def post(self, *args, **kw):
        return self.arc("post", "--base-url", self.hub.url, *args, **kw)

    def poll_lines(self, proc):
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = [l for l in proc.stdout.split("\n") if l]
        msgs = [json.loads(l) for l in lines]
        for m in msgs:
            self.assertIsInstance(m, dict)
        return msgs

    def test_post_broadcast(self):
        a = uid("a")
        m = self.ok_json(self.post("--agent", a, "hello"))
        self.assertEqual((m["from_agent"], m["body"], m["channel"], m["kind"], m["to_agent"]),
                         (a, "hello", "general", "chat", None))
        status, _, payload = self.hub.get("/v1/messages", channel="general",
                                          since_id=m["id"] - 1)
        self.assertEqual(payload["result"][0], m)

    def test_post_dm_kind_thread_and_channel(self):
        a, b = uid("a"), uid("b")
        dm = self.ok_json(self.post("--agent", a, "--to", b, "psst"))
        self.assertEqual((dm["channel"], dm["to_agent"], dm["from_agent"]), ("direct", b, a))
        status, _, payload = self.hub.get("/v1/inbox/" + b)
        self.assertEqual(payload["result"], [dm])
        self.hub.post("/v1/channels", {"name": "cli-ch"})
        m = self.ok_json(self.post("--agent", a, "--channel", "cli-ch", "--kind", "task",
                                   "--thread-id", "th-1", "do it"))
        self.assertEqual((m["channel"], m["kind"], m["thread_id"]), ("cli-ch", "task", "th-1"))

    def test_post_body_from_stdin(self):
        a = uid("a")
        m = self.ok_json(self.post("--agent", a, "-", input="line one\nline \u00e9 two\n\n"))
        self.assertEqual(m["body"], "line one\nline \u00e9 two")

    def test_env_defaults(self):
        a = uid("envagent")
        env = self.env(ARC_URL=self.hub.url, ARC_AGENT=a)
        m = self.ok_json(self.arc("post", "from env", env=env))
        self.assertEqual((m["from_agent"], m["body"]), (a, "from env"))
        who = self.ok_json(self.arc("whoami", env=env))
        self.assertEqual(who["agent_id"], a)
        # flags override the environment
        b = uid("flag")
        m = self.ok_json(self.arc("post", "--agent", b, "flagged", env=env))
        self.assertEqual(m["from_agent"], b)

    def test_poll(self):
        a, b, c = uid("a"), uid("b"), uid("c")
        since = self.latest()
        m1 = self.ok_json(self.post("--agent", a, "broadcast one"))
        dm = self.ok_json(self.post("--agent", a, "--to", b, "for b"))
        self.ok_json(self.post("--agent", c, "--to", uid("other"), "not for b"))
        own = self.ok_json(self.post("--agent", b, "b talking"))
        m2 = self.ok_json(self.post("--agent", c, "broadcast two"))

        base = ["poll", "--agent", b, "--base-url", self.hub.url, "--timeout", "0"]
        got = self.poll_lines(self.arc(*base, "--since-id", since))
        self.assertEqual(got, [m1, dm, m2])
        # the DM was surfaced to b by that poll: no read with surfaced
        # (arc poll's) shows it again (PROTOCOL §16.4); broadcasts are
        # not b's to be surfaced, so they come again
        got = self.poll_lines(self.arc(*base, "--since-id", since, "--include-self"))
        self.assertEqual(got, [m1, own, m2])
        got = self.poll_lines(self.arc(*base, "--since-id", dm["id"]))
        self.assertEqual(got, [m2])
        got = self.poll_lines(self.arc(*base, "--since-id", m2["id"]))
        self.assertEqual(got, [])
        # without --since-id, polling starts at the beginning (the
        # reference's shape), less what was surfaced to b already: the DM
        # came through the first poll
        dm2 = self.ok_json(self.post("--agent", a, "--to", b, "for b again"))
        got = self.poll_lines(self.arc(*base))
        self.assertIn(m1, got)
        self.assertIn(dm2, got)
        self.assertNotIn(dm, got)
        self.assertNotIn(own, got)
        self.assertNotIn(dm2, self.poll_lines(self.arc(*base)))   # exactly once

    def test_poll_waits_for_a_message(self):
        b = uid("b")
        self.hub.post("/v1/channels", {"name": "cli-wait"})
        since = self.latest()
        cmd = hub_command() + ["poll", "--agent", b, "--base-url", self.hub.url,
                               "--timeout", "30", "--channel", "cli-wait", "--since-id", str(since)]
        proc = subprocess.Popen(cmd, cwd=self.dir, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        # the poll registers b first; post once it is there
        wait_for(lambda: any(s["agent_id"] == b for s in self.hub.get("/v1/agents")[2]["result"]),
                 timeout=10)
        t0 = time.monotonic()
        m = self.ok_json(self.post("--agent", uid("a"), "--channel", "cli-wait", "wake"))
        stdout, stderr = proc.communicate(timeout=10)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(proc.returncode, 0, stderr)
        self.assertEqual([json.loads(l) for l in stdout.split("\n") if l], [m])

    def test_whoami(self):
        a = uid("a")
        boot = self.ok_json(self.arc("whoami", "--agent", a, "--base-url", self.hub.url))
        self.assertEqual(boot["agent_id"], a)
        self.assertEqual(boot["session"]["agent_id"], a)
        self.assertIs(boot["session"]["active"], True)
        self.assertEqual(boot["default_channel"], "general")
        self.assertIn(a, [s["agent_id"] for s in boot["live_agents"]])
        self.assertIsInstance(boot["latest_visible_id"], int)
        # whoami keeps a live session (another process's, maybe its arc
        # mcp: issue 18) rather than replacing it or failing with 409
        again = self.ok_json(self.arc("whoami", "--agent", a, "--base-url", self.hub.url))
        self.assertEqual(again["session"]["session_id"], boot["session"]["session_id"])

    def test_hub_down(self):
        url = "http://127.0.0.1:%d" % free_port()
        for args in (["post", "--agent", "a", "--base-url", url, "hi"],
                     ["poll", "--agent", "a", "--base-url", url, "--timeout", "0"],
                     ["whoami", "--agent", "a", "--base-url", url]):
            with self.subTest(args[0]):
                proc = self.arc(*args)
                self.assertEqual(proc.returncode, 2, proc)
                self.assertIn("no hub at", proc.stderr)

    def test_hub_error(self):
        proc = self.post("--agent", uid("a"), "--channel", "nope", "into the void")
        self.assertEqual(proc.returncode, 1, proc)
        self.assertIn("channel does not exist", proc.stderr)
        proc = self.post("--agent", uid("a"), "--kind", "bogus", "x")
        self.assertEqual(proc.returncode, 1, proc)
        self.assertIn("unsupported kind", proc.stderr)

    def test_usage_errors(self):
        for args in (["post", "--base-url", self.hub.url, "no agent"],
                     ["poll", "--base-url", self.hub.url, "--timeout", "0"],
                     ["whoami", "--base-url", self.hub.url],
                     ["post", "--agent", "a", "--base-url", self.hub.url],          # no BODY
                     ["poll", "--agent", "a", "--timeout", "61"],
                     ["post", "--agent", "a", "--bogus", "x"]):
            with self.subTest(" ".join(args)):
                proc = self.arc(*args)
                self.assertEqual(proc.returncode, 2, proc)
        proc = self.arc("post", "--base-url", self.hub.url, "x")
        self.assertIn("--agent", proc.stderr)


# ── help and version ────────────────────────────────────────────────────

@arc_only
class HelpTests(CliCase):

    def test_help_lists_commands(self):
        proc = self.arc("help")
        self.assertEqual(proc.returncode, 0, proc)
        for cmd in ("ensure", "stop", "reset", "status", "post", "poll", "whoami"):
            self.assertRegex(proc.stdout, r"(?m)^\s+%s\s" % cmd)
        for cmd in ("ensure", "stop", "reset", "status", "post", "poll", "whoami"):
            with self.subTest(cmd):
                sub = self.arc(cmd, "--help")
                self.assertEqual(sub.returncode, 0, sub)
                self.assertIn("usage", sub.stdout)

    def test_option_errors(self):
        """One parser: every command reports bad options the same way
        (exit 2, "arc CMD: ..." on stderr, nothing on stdout)."""
        for args, msg in ((["serve", "--port"], "arc serve: --port needs a value"),
                          (["serve", "--port=70000"], "from 0 to 65535"),
                          (["serve", "--sync", "fast"], "--sync must be full or normal"),
                          (["serve", "--quiet=1"], "--quiet takes no value"),
                          (["ensure", "--timeout", "0"], "arc ensure: --timeout"),
                          (["stop", "--bogus"], "arc stop: unknown option --bogus"),
                          (["post", "--agent", "a", "x", "y"], "unexpected argument y"),
                          (["poll", "--agent", "a", "--timeout=61"], "from 0 to 60"),
                          (["relay", "--base-url"], "arc relay: --base-url needs a value"),
                          (["relay-gc", "--older-than", "5q"], "bad duration 5q"),
                          (["relay-gc"], "--older-than is required"),
                          (["mcp", "--no-autostart=1"], "arc mcp: --no-autostart takes"),
                          (["smoke-agent", "--timeout-sec", "0"], "arc smoke-agent:"),
                          (["serve"] + ["--allowed-host=h%d" % i for i in range(17)],
                           "at most 16 times")):
            with self.subTest(args=args):
                proc = self.arc(*args)
                self.assertEqual(proc.returncode, 2, proc)
                self.assertIn(msg, proc.stderr)
                self.assertEqual(proc.stdout, "")

    def test_help_names_every_option(self):
        """--help is printed from the table the parser reads."""
        for cmd, opts in (("ensure", ["--timeout", "--allowed-host", "--sync", "--quiet",
                                      "--max-conns", "--token-file"]),
                          ("stop", ["--host", "--port", "--storage", "--token"]),
                          ("poll", ["--since-id", "--include-self", "--relay-dir"]),
                          ("relay-gc", ["--older-than", "--spool-dir"]),
                          ("mcp", ["--no-autostart", "--capabilities"])):
            with self.subTest(cmd=cmd):
                out = self.arc(cmd, "--help").stdout
                for opt in opts:
                    self.assertRegex(out, r"(?m)^  %s\b" % opt)

    def test_unknown_command(self):
        proc = self.arc("nosuchcmd")
        self.assertEqual(proc.returncode, 2, proc)
        self.assertIn("nosuchcmd", proc.stderr)

    def test_version(self):
        for args in (["--version"], ["version"]):
            proc = self.arc(*args)
            self.assertEqual(proc.returncode, 0, proc)
            self.assertRegex(proc.stdout, r"^arc \d+\.\d+\.\d+")


if __name__ == "__main__":
    unittest.main()
