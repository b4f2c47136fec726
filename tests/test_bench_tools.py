"""The bench's store generator (tests/genstore.py) writes a file the hub
serves as its own: every generated row comes back through the API."""

import os
import shutil
import sqlite3
import tempfile
import unittest

import genstore
from hubtest import Hub, hub_command

N, T, A = 3000, 60, 20


def page_all(hub, path, **params):
    """Every message of a paged read (since_id cursor, 500 at a time)."""
    out, since = [], 0
    while True:
        status, _, body = hub.get(path, since_id=since, limit=500, **params)
        assert status == 200, body
        out += body["result"]
        if len(body["result"]) < 500 and not body.get("more"):
            return out
        since = body["result"][-1]["id"]


class GeneratedStore(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="arc-test-genstore-")
        cls.path = os.path.join(cls.dir, "arc.sqlite3")
        cls.counts = genstore.generate(hub_command(), cls.path, N, T, A)
        genstore.refresh(cls.path)
        db = sqlite3.connect(cls.path)
        try:
            cls.n_dm = db.execute("SELECT count(*) FROM messages"
                                  " WHERE to_agent IS NOT NULL").fetchone()[0]
        finally:
            db.close()
        cls.hub = Hub().start(storage=cls.path)

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_counts_match(self):
        hub, c = self.hub, self.counts
        self.assertEqual((c["messages"], c["threads"], c["agents"]), (N, T, A))
        status, _, b = hub.get("/v1/threads")
        self.assertEqual(status, 200)
        self.assertEqual(len(b["result"]), T)
        self.assertEqual(sum(t["message_count"] for t in b["result"]),
                         sum(1 for m in self.broadcasts() if m["thread_id"]))
        status, _, b = hub.get("/v1/agents")
        self.assertEqual(sorted(a["agent_id"] for a in b["result"]),
                         sorted(f"agent-{k}" for k in range(A)))
        status, _, b = hub.get("/v1/channels")
        self.assertEqual(len(b["result"]), c["channels"])
        status, _, b = hub.get("/v1/tasks")
        self.assertEqual(len(b["result"]), c["tasks"])
        status, _, b = hub.get("/v1/tasks", status="open")
        self.assertEqual(len(b["result"]), c["open_tasks"])

    def broadcasts(self):
        if not hasattr(self, "_bc"):
            status, _, b = self.hub.get("/v1/channels")
            self._bc = [m for ch in b["result"]
                        for m in page_all(self.hub, "/v1/messages", channel=ch["name"])]
        return self._bc

    def test_every_message_is_served(self):
        dms = [m for k in range(A) for m in page_all(self.hub, f"/v1/inbox/agent-{k}")]
        self.assertEqual(len(dms), self.n_dm)
        ids = sorted(m["id"] for m in self.broadcasts() + dms)
        self.assertEqual(ids, list(range(1, N + 1)))

    def test_post_continues_the_sequence(self):
        status, _, b = self.hub.post("/v1/messages", {"from_agent": "t", "body": "next"})
        self.assertEqual(status, 201, b)
        self.assertGreater(b["result"]["id"], N)


if __name__ == "__main__":
    unittest.main()
