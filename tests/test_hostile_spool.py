"""A hostile spool (PROTOCOL §11, STYLE §6b): a sandboxed agent can write
anything into the relay's spool -- symlinks in place of the spool's own
directories, FIFOs raced onto claimed requests, names longer than the
answer's temporary name allows, thousands of agent directories, control
characters in names. The hub must read and write nothing outside the spool,
never block on a file, answer every request it executes, stay responsive
however many directories appear, and keep its log one line per entry.

Each test runs its own hub (or `arc relay-gc`) in a private directory,
with real symlinks, FIFOs and processes. The waits whose point is the
passage of time ("must NOT happen") give the hub a request answered after
the trap was set plus SETTLE seconds, longer than the hub's 1 s check of
the spool's root and requests/ directory.
"""

import ctypes
import json
import re
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

from hubtest import Hub, arc_only, hub_command, uid, wait_for
from test_relay import RelayClient, atomic_write

SETTLE = 2.5            # > the hub's 1 s root/requests check, with margin
ANSWER = 10.0           # a well-formed request is answered within this


def secret_request(body):
    return json.dumps({"method": "POST", "path": "/v1/messages",
                       "body": {"from_agent": "evil", "body": body}})


def short_write(path, data):
    """atomic_write with a short temporary name, so that request names up
    to NAME_MAX can be written (the reference client's ".<name>.<32hex>.tmp"
    allows stems of at most 212 bytes)."""
    tmp = os.path.join(os.path.dirname(path), ".%s.tmp" % uuid.uuid4().hex[:8])
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def hub_info_request(rid):
    return json.dumps({"request_id": rid, "method": "GET",
                       "path": "/v1/hub-info"}).encode()


def rename_exchange():
    """renameat2(RENAME_EXCHANGE) through libc: swaps two names in one step
    (Linux 3.15, glibc 2.28); a SkipTest without it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        raise unittest.SkipTest("no renameat2 in libc")
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    at_fdcwd, exchange = -100, 2
    return lambda a, b: fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), exchange)


def tree(root):
    """Every path under root (relative), directories with a trailing /."""
    out = []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        out += [os.path.normpath(os.path.join(rel, x)) + "/" for x in dirs]
        out += [os.path.normpath(os.path.join(rel, x)) for x in files]
    return sorted(out)


class SpoolCase(unittest.TestCase):
    """A fresh hub per test, in its own directory; spool = DIR/spool."""

    def make_dir(self, prefix="arc-spool-test-"):
        d = tempfile.mkdtemp(prefix=prefix)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def start_hub(self, d=None):
        hub = Hub()
        hub.dir = d or self.make_dir()
        self.addCleanup(hub.kill)
        hub.start()
        return hub

    def spool(self, hub):
        return os.path.join(hub.dir, "spool")

    def outside_with_request(self, agent="victim"):
        """A directory outside the spool holding agent/x.json, a request
        whose body must never reach the hub."""
        outside = self.make_dir("arc-spool-outside-")
        secret = uid("SECRET")
        os.makedirs(os.path.join(outside, agent))
        with open(os.path.join(outside, agent, "x.json"), "w") as f:
            f.write(secret_request(secret))
        return outside, secret

    def assertNotStored(self, hub, secret):
        code, _, payload = hub.get("/v1/messages", channel="general", limit=1000)
        self.assertEqual(code, 200, payload)
        self.assertNotIn(secret, [m["body"] for m in payload["result"]])


# ── 1. relay-gc never follows a link ───────────────────────────────────

@arc_only
class RelayGcTests(SpoolCase):

    def gc(self, spool, age="1s"):
        p = subprocess.run(hub_command() + ["relay-gc", "--older-than", age,
                                            "--spool-dir", spool],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)["removed"]

    def old(self, path, age=3600):
        t = time.time() - age
        os.utime(path, (t, t), follow_symlinks=False)

    def test_gc_never_follows_symlinked_spool_dirs(self):
        # Regression: a symlinked responses/ (or requests/) made relay-gc
        # delete old *.json / *.tmp one level below the link's target: a
        # project's package.json in a test home.
        d = self.make_dir()
        home = os.path.join(d, "home")
        victims = []
        for sub, name in (("project", "package.json"), ("project", "notes.tmp"),
                          ("build", "run.work")):
            os.makedirs(os.path.join(home, sub), exist_ok=True)
            path = os.path.join(home, sub, name)
            with open(path, "w") as f:
                f.write("{}")
            self.old(path)
            victims.append(path)
        for spool_name, links in (("s1", ("responses", "requests")),
                                  ("s2", ("responses",)), ("s3", ("requests",))):
            spool = os.path.join(d, spool_name)
            os.makedirs(spool)
            for sub in links:
                os.symlink(home, os.path.join(spool, sub))
            # a symlinked agent directory inside a real responses/
            if "responses" not in links:
                os.makedirs(os.path.join(spool, "responses"))
                os.symlink(os.path.join(home, "project"),
                           os.path.join(spool, "responses", "agent"))
            with self.subTest(spool=spool_name):
                self.assertEqual(self.gc(spool), 0)
                for path in victims:
                    self.assertTrue(os.path.exists(path), path)
        # a symlinked spool root is the user's own choice: followed once,
        # but nothing below it is
        link_root = os.path.join(d, "rootlink")
        os.symlink(os.path.join(d, "s1"), link_root)
        self.assertEqual(self.gc(link_root), 0)
        for path in victims:
            self.assertTrue(os.path.exists(path), path)

    def test_gc_removes_old_files_and_idle_agent_dirs(self):
        spool = self.make_dir()
        keep, gone = [], []
        for sub, name, age, kept in (
                ("requests", "old.work", 3600, False), ("requests", "new.work", 0, True),
                ("requests", "old.json", 3600, True),     # unclaimed: never deleted
                ("requests", ".x.json.abc.tmp", 3600, False),
                ("responses", "old.json", 3600, False), ("responses", "new.json", 0, True),
                ("responses", ".arc-0123456789abcdef.tmp", 3600, False)):
            os.makedirs(os.path.join(spool, sub, "a"), exist_ok=True)
            path = os.path.join(spool, sub, "a", name)
            with open(path, "w") as f:
                f.write("{}")
            self.old(path, age)
            (keep if kept else gone).append(path)
        # idle agent directories: empty and untouched for longer than the
        # cutoff are removed; recent or non-empty ones stay
        for sub in ("requests", "responses"):
            idle = os.path.join(spool, sub, "idle")
            os.makedirs(idle)
            self.old(idle)
            gone.append(idle)
            fresh = os.path.join(spool, sub, "fresh")
            os.makedirs(fresh)
            keep.append(fresh)
        for sub in ("requests", "responses"):   # their files' removal touched them
            self.old(os.path.join(spool, sub, "a"))
        removed = self.gc(spool, "10m")
        for path in keep:
            self.assertTrue(os.path.exists(path), path)
        for path in gone:
            self.assertFalse(os.path.exists(path), path)
        self.assertEqual(removed, len(gone))
        for sub in ("requests", "responses"):
            self.assertTrue(os.path.isdir(os.path.join(spool, sub, "a")))


# ── 2. nothing outside the spool is read or written ────────────────────

@arc_only
class SymlinkedSpoolTests(SpoolCase):

    def test_symlinked_requests_dir_is_not_followed(self):
        d = self.make_dir()
        outside, secret = self.outside_with_request()
        os.makedirs(os.path.join(d, "spool"))
        os.symlink(outside, os.path.join(d, "spool", "requests"))
        hub = self.start_hub(d)
        time.sleep(SETTLE)
        self.assertEqual(tree(outside), ["victim/", "victim/x.json"])
        self.assertNotStored(hub, secret)
        self.assertFalse(os.path.exists(os.path.join(d, "spool", "responses", "victim")))
        self.assertTrue(hub.alive())

    def test_symlinks_present_at_start_are_not_followed(self):
        """The start-up scan meets a symlinked agent directory and a
        symlinked request file (a running hub meets them through inotify,
        test_relay.PathEscapeTests)."""
        d = self.make_dir()
        outside, secret = self.outside_with_request()
        reqs = os.path.join(d, "spool", "requests")
        os.makedirs(os.path.join(reqs, "victim"))
        os.symlink(os.path.join(outside, "victim"), os.path.join(reqs, "evil"))
        os.symlink(os.path.join(outside, "victim", "x.json"),
                   os.path.join(reqs, "victim", "link.json"))
        hub = self.start_hub(d)
        rid, answer = RelayClient(self.spool(hub), "victim").call("GET", "/v1/hub-info")
        self.assertEqual(answer["status"], 200, answer)
        self.assertEqual(tree(outside), ["victim/", "victim/x.json"])
        self.assertTrue(os.path.islink(os.path.join(reqs, "victim", "link.json")))
        self.assertEqual(sorted(os.listdir(os.path.join(d, "spool", "responses"))), ["victim"])
        self.assertNotStored(hub, secret)

    def test_symlinked_responses_dir_is_not_written(self):
        d = self.make_dir()
        outside = self.make_dir("arc-spool-outside-")
        os.makedirs(os.path.join(d, "spool"))
        os.symlink(outside, os.path.join(d, "spool", "responses"))
        hub = self.start_hub(d)
        c = RelayClient(self.spool(hub), uid("ag"))
        os.makedirs(c.req_dir)
        rid = uuid.uuid4().hex
        atomic_write(c.request_path(rid), hub_info_request(rid))
        wait_for(lambda: os.path.exists(os.path.join(c.req_dir, rid + ".work")), 5, 0.005)
        time.sleep(SETTLE)
        self.assertEqual(tree(outside), [])
        self.assertTrue(hub.alive())

    def test_spool_root_swapped_for_symlink_is_not_followed(self):
        d = self.make_dir()
        hub = self.start_hub(d)
        spool = self.spool(hub)
        c = RelayClient(spool, uid("ag"))
        rid, answer = c.call("GET", "/v1/hub-info")
        self.assertEqual(answer["status"], 200, answer)
        outside = self.make_dir("arc-spool-outside-")
        secret = uid("SECRET")
        os.makedirs(os.path.join(outside, "requests", "victim"))
        os.makedirs(os.path.join(outside, "responses"))
        with open(os.path.join(outside, "requests", "victim", "x.json"), "w") as f:
            f.write(secret_request(secret))
        before = tree(outside)
        os.rename(spool, spool + ".moved")
        os.symlink(outside, spool)
        time.sleep(SETTLE)
        self.assertEqual(tree(outside), before)
        self.assertNotStored(hub, secret)
        self.assertIn("relay", hub.log_text())
        self.assertTrue(hub.alive())

    def test_requests_dir_swapped_for_symlink_is_not_followed(self):
        d = self.make_dir()
        hub = self.start_hub(d)
        spool = self.spool(hub)
        c = RelayClient(spool, uid("ag"))
        rid, answer = c.call("GET", "/v1/hub-info")
        self.assertEqual(answer["status"], 200, answer)
        outside, secret = self.outside_with_request()
        reqs = os.path.join(spool, "requests")
        os.rename(reqs, reqs + ".moved")
        os.symlink(outside, reqs)
        time.sleep(SETTLE)
        self.assertEqual(tree(outside), ["victim/", "victim/x.json"])
        self.assertNotStored(hub, secret)
        self.assertFalse(os.path.exists(os.path.join(spool, "responses", "victim")))
        # a real requests/ again: served again
        os.unlink(reqs)
        os.rename(reqs + ".moved", reqs)
        rid, answer = c.call("GET", "/v1/hub-info")
        self.assertEqual(answer["status"], 200, answer)

    def test_agent_dir_swap_race_never_lands_outside(self):
        """An attacker flips requests/A and responses/A between a real
        directory and a symlink to outside while A's requests are served:
        whatever the interleaving, nothing outside is read or written."""
        d = self.make_dir()
        hub = self.start_hub(d)
        spool = self.spool(hub)
        outside = self.make_dir("arc-spool-outside-")
        secret = uid("SECRET")
        with open(os.path.join(outside, "bait.json"), "w") as f:
            f.write(secret_request(secret))
        c = RelayClient(spool, "A")
        c.ensure_dirs()
        stop = threading.Event()
        flips = [0]
        exchange = rename_exchange()

        def flip(path):
            # Atomically exchange the real directory and a symlink to
            # outside, so that the name always exists and is half the
            # time a symlink.
            link = path + ".link"
            os.symlink(outside, link)
            while not stop.is_set():
                if exchange(path, link) == 0:
                    flips[0] += 1

        threads = [threading.Thread(target=flip, args=(p,)) for p in (c.req_dir, c.resp_dir)]
        for t in threads:
            t.start()
        try:
            end = time.monotonic() + 4
            while time.monotonic() < end:
                try:
                    c.submit("GET", "/v1/hub-info")
                except OSError:
                    pass
                # the bait is reachable as requests/A/bait.json whenever the
                # flip shows the symlink
        finally:
            stop.set()
            for t in threads:
                t.join()
        time.sleep(SETTLE)
        self.assertGreater(flips[0], 100)
        # Our client's own request files land outside whenever it writes
        # through the symlink; the hub must neither claim them nor answer
        # there.
        ours = re.compile(r"^(bait|[0-9a-f]{32})\.json$|^\.[0-9a-f]{32}\.json\.[0-9a-f]{32}\.tmp$")
        hubs = [n for n in tree(outside) if not ours.match(n)]
        for name in tree(outside):
            if ours.match(name) and not name.endswith(".tmp"):
                with open(os.path.join(outside, name)) as f:
                    if "completed_at" in f.read():
                        hubs.append(name)
        self.assertEqual(hubs, [], "%d files or directories made outside" % len(hubs))
        with open(os.path.join(outside, "bait.json")) as f:
            self.assertEqual(json.loads(f.read())["body"]["body"], secret)
        self.assertNotStored(hub, secret)
        self.assertTrue(hub.alive())


# ── 3. a FIFO never blocks the relay ───────────────────────────────────

@arc_only
class FifoTests(SpoolCase):

    def test_fifo_raced_onto_work_file_blocks_nobody(self):
        # Regression: a FIFO renamed onto <id>.work between the claim and
        # the open blocked the relay thread in open() for ever: nobody's
        # relay request was answered again and SIGTERM did not stop the hub.
        hub = self.start_hub()
        spool = self.spool(hub)
        c = RelayClient(spool, uid("fifo"))
        c.ensure_dirs()
        fifo = os.path.join(c.req_dir, ".fifo.tmp")
        stuck = None
        refused = 0
        end = time.monotonic() + 15
        i = 0
        while time.monotonic() < end and stuck is None:
            rid = "r%05d" % i
            i += 1
            work = os.path.join(c.req_dir, rid + ".work")
            c.submit("GET", "/v1/hub-info", rid=rid)
            t_end = time.monotonic() + 0.5
            while not c.answered(rid):
                if time.monotonic() > t_end:
                    stuck = rid
                    break
                try:
                    os.mkfifo(fifo)
                except FileExistsError:
                    pass
                os.rename(fifo, work)
            if stuck is None and c.wait(rid)["status"] == 400:
                refused += 1
        # A FIFO planted as a request is never a request either.
        os.mkfifo(os.path.join(c.req_dir, "planted.json"))
        other = RelayClient(spool, uid("other"))
        rid, answer = other.call("GET", "/v1/hub-info")
        self.assertEqual(answer["status"], 200, answer)
        print("\n  FIFO race: %d requests, %d FIFOs opened and refused with 400, stuck: %s"
              % (i, refused, stuck))
        self.assertIsNone(stuck)
        hub.proc.send_signal(signal.SIGTERM)
        self.assertIsNotNone(hub.wait_exit(5), "SIGTERM did not stop the hub")


# ── 4. every executed request can be answered ──────────────────────────

@arc_only
class LongNameTests(SpoolCase):

    def test_long_request_stems_are_answered(self):
        # Regression: stems of 233-250 bytes were executed but the answer's
        # temporary name ".<stem>.json.<12hex>.tmp" exceeded NAME_MAX, so
        # no answer was ever written.
        hub = self.start_hub()
        c = RelayClient(self.spool(hub), uid("long"))
        c.ensure_dirs()
        rids = []
        for n in (200, 232, 233, 240, 250):
            rid = uuid.uuid4().hex + "-"
            rid += "x" * (n - len(rid))
            short_write(c.request_path(rid), hub_info_request(rid))
            rids.append(rid)
        for rid in rids:
            with self.subTest(stem=len(rid)):
                self.assertEqual(c.wait(rid)["status"], 200)


# ── 5. thousands of agent directories ──────────────────────────────────

@arc_only
class ManyDirsTests(SpoolCase):

    def test_request_among_2000_fresh_dirs_is_answered(self):
        # Regression: every new agent directory triggered a full rescan of
        # all of them, so 1,000 mkdirs left the relay deaf for ~18 s.
        hub = self.start_hub()
        spool = self.spool(hub)
        reqs = os.path.join(spool, "requests")
        for k in range(2000):
            os.mkdir(os.path.join(reqs, "crowd-%05d" % k))
        c = RelayClient(spool, uid("late"))
        rid, answer = c.call("GET", "/v1/hub-info", timeout=30)
        self.assertEqual(answer["status"], 200, answer)
        # and a request written into one of the crowd's directories
        crowd = RelayClient(spool, "crowd-01999")
        rid, answer = crowd.call("GET", "/v1/hub-info", timeout=30)
        self.assertEqual(answer["status"], 200, answer)


# ── 6. the log stays one line per entry ────────────────────────────────

@arc_only
class LogEscapeTests(SpoolCase):

    def test_control_characters_in_names_are_escaped_in_the_log(self):
        hub = self.start_hub()
        spool = self.spool(hub)
        tag = uuid.uuid4().hex[:8]
        # An answer that cannot be written (responses/<agent> is a plain
        # file) is logged with the request's file name in it.
        c = RelayClient(spool, "x", dirname="ag\rent\x1b[31m" + tag)
        os.makedirs(c.req_dir)
        os.makedirs(os.path.dirname(c.resp_dir), exist_ok=True)
        with open(c.resp_dir, "w") as f:
            f.write("not a directory")
        atomic_write(c.request_path("\ntouch PWNED-%s #" % tag),
                     b'{"method": "GET", "path": "/v1/hub-info"}')
        # A long stem with a newline (its answer once failed with a log line).
        c2 = RelayClient(spool, uid("long"))
        c2.ensure_dirs()
        stem = "\ntouch PWNED2-%s #" % tag
        rid = stem + "x" * (240 - len(stem))
        short_write(c2.request_path(rid), hub_info_request(rid))
        self.assertEqual(c2.wait(rid)["status"], 200)
        log = wait_for(lambda: "PWNED-" + tag in hub.log_text() and hub.log_text(), 5)
        for line in log.splitlines():
            self.assertFalse(line.startswith("touch PWNED"), line)
            self.assertNotIn("\x1b", line)
            self.assertNotIn("\r", line)


if __name__ == "__main__":
    unittest.main()
