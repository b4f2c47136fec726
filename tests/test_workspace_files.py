"""The hub's own files in a hostile workspace (PROTOCOL §2.6).

The storage file, and so .arc.pid, arc.log and .arc.lock, sit by default in
the workspace, where a sandboxed agent can plant anything: symlinks, hard
links, FIFOs, pidfiles naming other processes or other hubs. These tests
plant the real things and check that the hub and the CLI neither write
through them nor obey them. Run as root in CI, so "another user" is made
with chown/setuid to nobody (65534).
"""

import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

from hubtest import Hub, arc_only, free_port, hub_command, wait_for

NOBODY = 65534
VICTIM_TEXT = b"ssh-ed25519 AAAA... the user's own file\n"


def arc_cli():
    """The arc binary the suite runs (ARC may carry a sanitizer build)."""
    return hub_command()


def alive(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


@arc_only
class WorkspaceFileTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="arc-ws-")
        self.ws = os.path.join(self.tmp, "workspace")
        self.home = os.path.join(self.tmp, "home")
        os.mkdir(self.ws, 0o700)
        os.mkdir(self.home, 0o700)
        self.victim = os.path.join(self.home, "authorized_keys")
        with open(self.victim, "wb") as f:
            f.write(VICTIM_TEXT)
        self.storage = os.path.join(self.ws, "arc.sqlite3")
        self.procs = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        # A hub that ensure started is stopped through its pidfile.
        try:
            with open(os.path.join(self.ws, ".arc.pid")) as f:
                pid = json.load(f)["pid"]
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass
        subprocess.run(["rm", "-rf", self.tmp])

    def victim_intact(self):
        with open(self.victim, "rb") as f:
            self.assertEqual(f.read(), VICTIM_TEXT)

    def cli(self, *args, timeout=30, cwd=None):
        return subprocess.run(arc_cli() + list(args), cwd=cwd or self.ws,
                              capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def serve(self, storage=None):
        """A hub in the foreground on its own free port; returns (proc, port)."""
        port = free_port()
        if not hasattr(self, "hub_log"):
            self.hub_log = open(os.path.join(self.tmp, "hubs.log"), "ab")
            self.addCleanup(self.hub_log.close)
        p = subprocess.Popen(arc_cli() + ["serve", "--port", str(port), "--storage",
                                          storage or self.storage, "--quiet",
                                          "--spool-dir", os.path.join(self.tmp, "spool")],
                             stdout=subprocess.DEVNULL, stderr=self.hub_log,
                             stdin=subprocess.DEVNULL)
        self.procs.append(p)
        import urllib.request

        def up():
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/v1/hub-info" % port, timeout=1)
                return True
            except OSError:
                return p.poll() is not None
        wait_for(up, timeout=10, msg="hub did not start")
        if p.poll() is not None:
            with open(self.hub_log.name, "rb") as f:
                self.fail("hub exited: %r" % f.read())
        return p, port

    # -- files the hub writes -------------------------------------------------

    def test_planted_pidfile_link_is_replaced_not_written(self):
        os.symlink(self.victim, os.path.join(self.ws, ".arc.pid"))
        p, _port = self.serve()
        path = os.path.join(self.ws, ".arc.pid")
        wait_for(lambda: not os.path.islink(path), msg="pidfile still a link")
        with open(path) as f:
            self.assertEqual(json.load(f)["pid"], p.pid)
        self.victim_intact()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
        self.assertFalse(os.path.lexists(path))
        self.victim_intact()

    def test_planted_log_link_is_refused(self):
        os.symlink(self.victim, os.path.join(self.ws, "arc.log"))
        r = self.cli("ensure", "--port", str(free_port()), "--storage", self.storage)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"arc.log", r.stdout + r.stderr)
        self.assertIn(b"symbolic link", r.stdout + r.stderr)
        self.victim_intact()
        self.assertFalse(os.path.exists(os.path.join(self.ws, ".arc.pid")))

    def test_hard_linked_log_is_refused(self):
        os.link(self.victim, os.path.join(self.ws, "arc.log"))
        r = self.cli("ensure", "--port", str(free_port()), "--storage", self.storage)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"hard link", r.stdout + r.stderr)
        self.victim_intact()

    def test_fifo_log_neither_blocks_nor_is_used(self):
        os.mkfifo(os.path.join(self.ws, "arc.log"))
        r = self.cli("ensure", "--port", str(free_port()), "--storage", self.storage,
                     timeout=20)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"not a regular file", r.stdout + r.stderr)

    def test_planted_lock_link_is_refused(self):
        target = os.path.join(self.home, "created-by-arc")
        os.symlink(target, os.path.join(self.ws, ".arc.lock"))   # dangling
        r = self.cli("ensure", "--port", str(free_port()), "--storage", self.storage)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b".arc.lock", r.stdout + r.stderr)
        self.assertFalse(os.path.lexists(target))

    def test_ensure_still_works_in_a_clean_workspace(self):
        r = self.cli("ensure", "--port", str(free_port()), "--storage", self.storage)
        self.assertEqual(r.returncode, 0, r)
        self.assertTrue(json.loads(r.stdout)["running"])
        r = self.cli("stop", "--storage", self.storage)
        self.assertEqual(r.returncode, 0, r)

    # -- pidfiles the CLI reads ---------------------------------------------

    def plant_pidfile(self, pid, url, where=None):
        path = os.path.join(where or self.ws, ".arc.pid")
        with open(path, "w") as f:
            json.dump({"pid": pid, "port": 1, "url": url}, f)
        return path

    def stop_here(self):
        """`arc stop` for the workspace's storage on a port nobody serves:
        only a pidfile can lead it anywhere."""
        return self.cli("stop", "--storage", self.storage, "--port", str(free_port()))

    def test_pidfile_naming_another_program_is_not_signalled(self):
        hub, port = self.serve(os.path.join(self.home, "real.sqlite3"))
        sleeper = subprocess.Popen(["sleep", "60"])
        self.procs.append(sleeper)
        self.plant_pidfile(sleeper.pid, "http://127.0.0.1:%d" % port)
        r = self.stop_here()
        self.assertNotEqual(r.returncode, 0, r)
        self.assertTrue(alive(sleeper.pid), "arc stop signalled a non-arc process")
        self.assertIsNone(hub.poll())

    def test_pidfile_naming_another_users_process_is_not_signalled(self):
        _hub, port = self.serve(os.path.join(self.home, "real.sqlite3"))
        sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: os.setuid(NOBODY))
        self.procs.append(sleeper)
        self.plant_pidfile(sleeper.pid, "http://127.0.0.1:%d" % port)
        self.stop_here()
        self.assertTrue(alive(sleeper.pid))

    def test_pidfile_owned_by_another_user_is_ignored(self):
        hub, port = self.serve(os.path.join(self.home, "real.sqlite3"))
        path = self.plant_pidfile(hub.pid, "http://127.0.0.1:%d" % port)
        os.chown(path, NOBODY, NOBODY)
        r = self.stop_here()
        self.assertNotEqual(r.returncode, 0, r)
        self.assertIsNone(hub.poll(), "a pidfile of another user's stopped the hub")
        st = self.cli("status", "--storage", self.storage, "--port", str(free_port()))
        self.assertNotIn(str(port).encode(), st.stdout)

    def test_pidfile_in_a_directory_others_can_write_is_ignored(self):
        hub, port = self.serve(os.path.join(self.home, "real.sqlite3"))
        shared = os.path.join(self.tmp, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o1777)
        self.plant_pidfile(hub.pid, "http://127.0.0.1:%d" % port, where=shared)
        r = self.cli("stop", "--storage", os.path.join(shared, "arc.sqlite3"),
                     "--port", str(free_port()), cwd=shared)
        self.assertNotEqual(r.returncode, 0, r)
        self.assertIsNone(hub.poll())

    def test_pidfile_naming_a_url_off_loopback_is_ignored(self):
        # 0.0.0.0 reaches this machine's hub on Linux, but is no loopback
        # address: the rule is on the URL as written.
        hub, port = self.serve(os.path.join(self.home, "real.sqlite3"))
        self.plant_pidfile(hub.pid, "http://0.0.0.0:%d" % port)
        r = self.stop_here()
        self.assertNotEqual(r.returncode, 0, r)
        self.assertIsNone(hub.poll())

    def test_pidfile_whose_hub_reports_another_pid_is_ignored(self):
        # A real arc process of ours, but the URL is another hub's.
        hub1, _port1 = self.serve(os.path.join(self.home, "one.sqlite3"))
        hub2, port2 = self.serve(os.path.join(self.home, "two.sqlite3"))
        self.plant_pidfile(hub1.pid, "http://127.0.0.1:%d" % port2)
        r = self.stop_here()
        self.assertNotEqual(r.returncode, 0, r)
        self.assertIsNone(hub1.poll())
        self.assertIsNone(hub2.poll())

    def test_genuine_pidfile_is_obeyed(self):
        hub, port = self.serve()
        r = self.cli("status", "--storage", self.storage, "--port", str(free_port()))
        self.assertEqual(r.returncode, 0, r)
        self.assertIn(("127.0.0.1:%d" % port).encode(), r.stdout)
        r = self.cli("stop", "--storage", self.storage, "--port", str(free_port()))
        self.assertEqual(r.returncode, 0, r)
        hub.wait(timeout=10)


if __name__ == "__main__":
    unittest.main()
