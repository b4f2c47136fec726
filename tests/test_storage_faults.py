"""Storage faults (PROTOCOL §10.2, §4.4): nothing acknowledged is ever lost.

- Durability: 16 clients post at once, the hub is SIGKILLed at a random
  moment and restarted on the same file: every message answered 201 is
  there, with its body, and ids are unique and increasing. Rounds:
  ARC_DURABILITY_ROUNDS (default 3; the long run for the notes uses 50+).
- Disk full (a small tmpfs; needs root and mount): writes get a JSON 503
  with SQLite's reason, reads go on, writes work again once space returns.
- The storage file or its -wal removed or replaced under a running hub:
  writes get 503 (they would land in unlinked files), reads go on.
- Startup on an unwritable path: a clear message and exit status 1.
- Another process holding the write lock: writes wait for it without
  blocking the loop (reads are served meanwhile) and get 503 after 5 s,
  or at once when the hub is stopped meanwhile.
"""

import http.client
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import unittest

from hubtest import HTTPReader, Hub, arc_only, connect, hub_command, wait_for
from test_relay import RelayClient

ROUNDS = int(os.environ.get("ARC_DURABILITY_ROUNDS", "3"))
N_CLIENTS = 16


def all_messages(hub, channel="general"):
    """Every broadcast in channel, in the order the hub lists them."""
    out, since = [], 0
    while True:
        status, _, payload = hub.get("/v1/messages", channel=channel, since_id=since,
                                     limit=500)
        assert status == 200, payload
        rows = payload["result"]
        if not rows:
            return out
        out.extend(rows)
        since = rows[-1]["id"]


class Poster(threading.Thread):
    """Posts numbered messages on one keep-alive connection until it fails."""

    def __init__(self, port, name):
        super().__init__(daemon=True)
        self.port, self.name = port, name
        self.acked = []          # (id, body) of every 201, in posting order
        self.errors = []

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        seq = 0
        try:
            while True:
                body = "%s-%d" % (self.name, seq)
                data = json.dumps({"from_agent": self.name, "body": body})
                conn.request("POST", "/v1/messages", body=data,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                if resp.status != 201:
                    self.errors.append((resp.status, payload[:200]))
                    return
                self.acked.append((json.loads(payload)["result"]["id"], body))
                seq += 1
        except (OSError, http.client.HTTPException):
            return           # the hub died under us: expected
        finally:
            conn.close()


@arc_only
class DurabilityTests(unittest.TestCase):

    def test_sigkill_while_posting_loses_no_acknowledged_message(self):
        hub = Hub().start()
        rng = random.Random(int(os.environ.get("ARC_DURABILITY_SEED", "0")) or None)
        acked = {}           # id -> body, over all rounds
        total_kills = 0
        try:
            for rnd in range(ROUNDS):
                posters = [Poster(hub.port, "p%d-%d" % (rnd, i)) for i in range(N_CLIENTS)]
                for p in posters:
                    p.start()
                time.sleep(rng.uniform(0.1, 0.6))   # the random moment
                hub.kill()
                total_kills += 1
                for p in posters:
                    p.join(15)
                    self.assertFalse(p.is_alive())
                    self.assertEqual(p.errors, [], "non-201 answer before the kill")
                    ids = [i for i, _ in p.acked]
                    self.assertEqual(ids, sorted(set(ids)), "a client's ids not increasing")
                    for i, body in p.acked:
                        self.assertNotIn(i, acked, "id %d acknowledged twice" % i)
                        acked[i] = body
                hub.start(storage=hub.storage)
                rows = all_messages(hub)
                ids = [m["id"] for m in rows]
                self.assertEqual(ids, sorted(set(ids)), "listed ids not unique and increasing")
                have = {m["id"]: m["body"] for m in rows}
                lost = [i for i in acked if have.get(i) != acked[i]]
                self.assertEqual(lost, [], "acknowledged messages lost or changed")
            # New ids continue above everything stored.
            status, _, payload = hub.post("/v1/messages", {"from_agent": "after",
                                                           "body": "after"})
            self.assertEqual(status, 201)
            self.assertGreater(payload["result"]["id"], max(acked) if acked else 0)
        finally:
            hub.stop()
        self.assertGreater(len(acked), 0)
        print("\ndurability: %d kills, %d acknowledged messages, 0 lost"
              % (total_kills, len(acked)), flush=True)


def can_mount():
    return os.geteuid() == 0 and shutil.which("mount") and shutil.which("umount")


class Tmpfs:
    """A tmpfs of `size` mounted on a fresh directory (root only)."""

    def __init__(self, size):
        self.dir = tempfile.mkdtemp(prefix="arc-tmpfs-")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs",
                            self.dir], capture_output=True, text=True)
        if r.returncode:
            os.rmdir(self.dir)
            raise unittest.SkipTest("cannot mount a tmpfs: %s" % r.stderr.strip())

    def free_bytes(self):
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def close(self):
        subprocess.run(["umount", "-l", self.dir], capture_output=True)
        os.rmdir(self.dir)


@arc_only
@unittest.skipUnless(can_mount(), "needs root and mount for a small tmpfs")
class DiskFullTests(unittest.TestCase):

    def test_full_disk_gives_503_reads_go_on_and_writes_recover(self):
        fs = Tmpfs("16m")
        hub = Hub()
        try:
            hub.start(storage=os.path.join(fs.dir, "arc.sqlite3"))
            ok = [hub.post("/v1/messages", {"from_agent": "w", "body": "before %d" % i})
                  for i in range(5)]
            self.assertTrue(all(r[0] == 201 for r in ok))
            # Take all but ~200 KB, then write until the disk is full.
            filler = os.path.join(fs.dir, "filler")
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, fs.free_bytes() - 200 * 1024))
            acked, fail = [], None
            for i in range(200):
                status, _, payload = hub.post("/v1/messages", {
                    "from_agent": "w", "body": "%d " % i + "x" * 20000})
                if status != 201:
                    fail = (status, payload)
                    break
                acked.append(payload["result"]["id"])
            self.assertIsNotNone(fail, "the disk never filled up")
            self.assertEqual(fail[0], 503)
            self.assertEqual(fail[1], {"ok": False,
                                       "error": "storage error: database or disk is full"})
            # Reads are still served, acknowledged writes included.
            have = {m["id"] for m in all_messages(hub)}
            self.assertTrue(set(acked) <= have)
            for path in ("/v1/hub-info", "/v1/channels", "/v1/threads", "/v1/claims"):
                self.assertEqual(hub.get(path)[0], 200, path)
            # A read that also refreshes presence needs a (small) write: it
            # is served, or refused with the same reason, never garbled.
            status, _, payload = hub.get("/v1/events", agent_id="reader")
            if status != 200:
                self.assertEqual((status, payload), (503, fail[1]))
            # Space returns: writes work again, nothing acknowledged is lost.
            os.unlink(filler)
            status, _, payload = hub.post("/v1/messages", {"from_agent": "w",
                                                           "body": "after"})
            self.assertEqual(status, 201, payload)
            hub.restart()
            have = {m["id"] for m in all_messages(hub)}
            self.assertTrue(set(acked) <= have)
            self.assertIn(payload["result"]["id"], have)
        finally:
            hub.stop()
            fs.close()


@arc_only
class VanishedFileTests(unittest.TestCase):

    GONE = ("storage error: storage file was removed or replaced while the hub "
            "was running; restart the hub")

    def check_refuses_writes_serves_reads(self, damage):
        with Hub() as hub:
            status, _, payload = hub.post("/v1/messages", {"from_agent": "a",
                                                           "body": "kept"})
            self.assertEqual(status, 201)
            damage(hub.storage)
            status, _, body = hub.post("/v1/messages", {"from_agent": "a", "body": "lost?"})
            self.assertEqual((status, body), (503, {"ok": False, "error": self.GONE}))
            # Reads go on from the files the hub still has open.
            bodies = [m["body"] for m in all_messages(hub)]
            self.assertEqual(bodies[-1], "kept")
            self.assertNotIn("lost?", bodies)
            self.assertEqual(hub.get("/v1/hub-info")[0], 200)
            self.assertIn("removed or replaced", hub.log_text())
            # And keep refusing, without crashing.
            self.assertEqual(hub.post("/v1/channels", {"name": "x"})[0], 503)
            self.assertTrue(hub.alive())

    def test_storage_file_removed(self):
        self.check_refuses_writes_serves_reads(os.unlink)

    def test_wal_file_removed(self):
        self.check_refuses_writes_serves_reads(lambda p: os.unlink(p + "-wal"))

    def test_storage_file_replaced(self):
        def replace(path):
            tmp = path + ".new"
            shutil.copyfile(path, tmp)
            os.rename(tmp, path)
        self.check_refuses_writes_serves_reads(replace)


@arc_only
class UnwritableStartupTests(unittest.TestCase):

    def serve(self, storage, cwd):
        argv = hub_command() + ["--port", "0", "--storage", storage, "--quiet"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd,
                              stdin=subprocess.DEVNULL)

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="arc-test-")

    def tearDown(self):
        subprocess.run(["chattr", "-R", "-i", self.dir], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_missing_directory(self):
        r = self.serve(os.path.join(self.dir, "no", "such", "arc.sqlite3"), self.dir)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("arc: cannot open storage", r.stderr)
        self.assertIn("unable to open database file", r.stderr)

    def test_parent_is_a_file(self):
        open(os.path.join(self.dir, "file"), "w").close()
        r = self.serve(os.path.join(self.dir, "file", "arc.sqlite3"), self.dir)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("arc: cannot open storage", r.stderr)

    def test_path_is_a_directory(self):
        r = self.serve(self.dir, self.dir)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("arc: storage path is a directory", r.stderr)

    @unittest.skipUnless(can_mount(), "needs root and mount")
    def test_read_only_file_system(self):
        fs = Tmpfs("1m")
        try:
            subprocess.run(["mount", "-o", "remount,ro", fs.dir], check=True)
            r = self.serve(os.path.join(fs.dir, "arc.sqlite3"), self.dir)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("arc: cannot open storage", r.stderr)
        finally:
            fs.close()

    def test_read_only_storage_file(self):
        path = os.path.join(self.dir, "arc.sqlite3")
        with Hub() as hub:
            hub.stop_process()
            shutil.copyfile(hub.storage, path)
        if os.geteuid() == 0:   # root writes through mode bits: make it immutable
            if subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
                self.skipTest("chattr +i not supported here")
        else:
            os.chmod(path, 0o444)
        r = self.serve(path, self.dir)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"arc: cannot (initialise|write) storage .*: "
                                   r"attempt to write a readonly database")


@arc_only
class LockedStorageTests(unittest.TestCase):
    """Another process holds SQLite's write lock (BEGIN IMMEDIATE)."""

    @classmethod
    def setUpClass(cls):
        cls.hub = Hub().start()

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()

    def hold_lock(self, seconds):
        """Take the write lock in another connection for `seconds`; returns
        (thread, event set when it is taken, list holding the release time)."""
        taken, released = threading.Event(), []

        def run():
            db = sqlite3.connect(self.hub.storage, isolation_level=None, timeout=5)
            db.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)
            released.append(time.monotonic())
            db.execute("ROLLBACK")
            db.close()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.assertTrue(taken.wait(10))
        return t, released

    def test_write_waits_for_a_short_lock_and_reads_go_on(self):
        t, released = self.hold_lock(1.5)
        result = []

        def post():
            result.append(self.hub.post("/v1/messages", {"from_agent": "w",
                                                         "body": "waited"}))
        p = threading.Thread(target=post)
        p.start()
        # While the write waits, the loop serves reads at once.
        for _ in range(5):
            self.assertEqual(self.hub.get("/v1/hub-info")[0], 200)
            self.assertEqual(self.hub.get("/v1/messages", channel="general")[0], 200)
        self.assertEqual(released, [], "reads were held up until the lock went")
        p.join(20)
        t.join(20)
        status, _, payload = result[0]
        self.assertEqual(status, 201, payload)
        self.assertIn("waited", [m["body"] for m in all_messages(self.hub)])

    def test_relayed_write_waits_for_the_lock_too(self):
        relay = RelayClient(os.path.join(self.hub.dir, "spool"), "relayed")
        t, released = self.hold_lock(1.5)
        rid = relay.submit("POST", "/v1/messages", {"from_agent": "relayed",
                                                    "body": "through the spool"})
        answer = relay.wait(rid, timeout=20)
        self.assertEqual(answer["status"], 201, answer)
        self.assertEqual(len(released), 1, "committed while the lock was held?")
        t.join(20)

    def test_write_gives_up_with_503_after_the_busy_timeout(self):
        t, released = self.hold_lock(7)
        t0 = time.monotonic()
        status, _, payload = self.hub.post("/v1/messages", {"from_agent": "w",
                                                            "body": "refused"})
        waited = time.monotonic() - t0
        self.assertEqual((status, payload), (503, {
            "ok": False, "error": "storage error: database is locked"}))
        self.assertEqual(released, [], "the 503 came only after the lock went")
        self.assertGreater(waited, 1.0)
        t.join(20)
        status, _, payload = self.hub.post("/v1/messages", {"from_agent": "w",
                                                            "body": "later"})
        self.assertEqual(status, 201, payload)
        self.assertTrue(self.hub.alive())


@arc_only
class LockedShutdownTests(unittest.TestCase):
    """The hub is stopped while writes wait for another process's lock."""

    def test_waiting_writes_are_answered_503_on_shutdown(self):
        # An HTTP write and a relayed one both wait for the lock; SIGTERM
        # answers both (the socket one used to be closed without a word).
        hub = Hub().start()
        self.addCleanup(hub.stop)
        taken, release = threading.Event(), threading.Event()
        self.addCleanup(release.set)

        def hold():
            db = sqlite3.connect(hub.storage, isolation_level=None, timeout=5)
            db.execute("BEGIN IMMEDIATE")
            taken.set()
            release.wait(30)
            db.execute("ROLLBACK")
            db.close()
        threading.Thread(target=hold, daemon=True).start()
        self.assertTrue(taken.wait(10))
        body = json.dumps({"from_agent": "w", "body": "never"}).encode()
        sock = connect(hub.port)
        self.addCleanup(sock.close)
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                     b"\r\n%s" % (len(body), body))
        relay = RelayClient(os.path.join(hub.dir, "spool"), "relayed")
        rid = relay.submit("POST", "/v1/messages", {"from_agent": "r", "body": "never"})
        wait_for(lambda: not os.path.exists(relay.request_path(rid)),
                 msg="the relay did not claim the request")
        self.assertEqual(hub.get("/v1/hub-info")[0], 200)   # reads still go on
        hub.proc.send_signal(signal.SIGTERM)
        locked = {"ok": False, "error": "storage error: database is locked"}
        resp = HTTPReader(sock).read_response()
        self.assertIsNotNone(resp, "closed without an answer")
        self.assertEqual((resp.status, resp.json()), (503, locked))
        answer = relay.wait(rid, timeout=20)
        self.assertEqual((answer["status"], answer["body"]), (503, locked))
        self.assertEqual(hub.wait_exit(), 0)


if __name__ == "__main__":
    unittest.main()
