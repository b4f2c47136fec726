"""Task dependencies (arc:task_deps) and rollup at every depth
(arc:deep_rollup), PROTOCOL §14.

A task names the tasks it waits for in metadata.blocked_by; GET /v1/tasks
shows blocked_by and claimable; a claim of a blocked task is refused with
409; completing the last open blocker posts one unblock notice.
"""

import json
import os
import sqlite3
import subprocess
import threading
import unittest

from hubtest import Hub, HubCase, arc_only, hand_over, hub_command, reference_py, uid
from test_mcp import McpCase, tool_text


def notices(hub, reply_to, key):
    """The system notices replying to task `reply_to` that carry `key` in
    their metadata, as anyone reading the thread sees them."""
    out = []
    for m in hub.get("/v1/messages", channel="general", limit=500)[2]["result"]:
        if m["from_agent"] == "system" and m["reply_to"] == reply_to and key in m["metadata"]:
            out.append(m)
    return out


@arc_only
class DepsTests(HubCase):
    def task(self, body="t", **fields):
        fields.setdefault("kind", "task")
        return self.msg(from_agent="boss", body=body, **fields)

    def tasks(self, **params):
        return {t["task_id"]: t for t in self.assertOk(self.hub.get("/v1/tasks", **params))}

    def complete(self, tid):
        return self.hub.post("/v1/tasks/%d/complete" % tid, {})[2]

    def thread_notices(self, thread, tid, key="unblocked"):
        th = self.assertOk(self.hub.get("/v1/threads/%s" % thread))
        return [m for m in th["messages"]
                if m["from_agent"] == "system" and m["reply_to"] == tid and key in m["metadata"]]

    def test_feature_listed(self):
        feats = self.assertOk(self.hub.get("/v1/hub-info"))["features"]
        self.assertIn("arc:task_deps", feats)
        self.assertIn("arc:deep_rollup", feats)

    def test_three_levels_unblock_once_each(self):
        """A waits for B waits for C. Completing C (twice) unblocks B with
        one notice; B answered by a task_result unblocks A with one notice,
        addressed to the agent A was given to and waking its long-poll."""
        th = uid("th")
        c = self.task("C", thread_id=th)
        b = self.task("B", kind="task_request", to_agent="bee", thread_id=th,
                      metadata={"blocked_by": [c["id"]]})
        a = self.task("A", to_agent="ant", thread_id=th,
                      metadata={"blocked_by": [b["id"]], "note": "kept"})
        self.assertEqual(a["metadata"], {"blocked_by": [b["id"]], "note": "kept"})
        ts = self.tasks(thread_id=th)
        self.assertEqual([ts[i]["blocked_by"] for i in (c["id"], b["id"], a["id"])],
                         [[], [c["id"]], [b["id"]]])
        self.assertEqual([ts[i]["claimable"] for i in (c["id"], b["id"], a["id"])],
                         [True, False, False])

        for _ in range(2):   # a retried completion posts nothing more
            self.assertEqual(self.complete(c["id"])["result"]["status"], "done")
        got = self.thread_notices(th, b["id"])
        self.assertEqual(len(got), 1, got)
        self.assertEqual(got[0]["to_agent"], "bee")
        self.assertEqual(got[0]["kind"], "notice")
        self.assertEqual(got[0]["thread_id"], th)
        self.assertEqual(got[0]["metadata"], {"unblocked": True, "task_id": b["id"],
                                              "blocked_by": [c["id"]],
                                              "completed_blocker": c["id"]})
        self.assertIn("Task %d is unblocked" % b["id"], got[0]["body"])
        ts = self.tasks(thread_id=th)
        self.assertTrue(ts[b["id"]]["claimable"])
        self.assertFalse(ts[a["id"]]["claimable"])
        self.assertEqual(self.thread_notices(th, a["id"]), [])

        # ant waits in a long-poll; B's task_result must wake it.
        latest = self.assertOk(self.hub.get("/v1/hub-info"))["latest_message_id"]
        woke = {}

        def wait():
            woke["r"] = self.hub.get("/v1/events", http_timeout=30, agent_id="ant",
                                     since_id=latest, timeout=20)[2]
        t = threading.Thread(target=wait)
        t.start()
        res = self.msg(from_agent="bee", kind="task_result", reply_to=b["id"],
                       to_agent="boss", body="done", thread_id=th)
        self.assertEqual(res["metadata"]["task_completed"], b["id"])
        t.join(30)
        self.assertFalse(t.is_alive())
        msgs = [m for m in woke["r"]["result"] if m["reply_to"] == a["id"]]
        self.assertEqual(len(msgs), 1, woke)
        self.assertEqual(msgs[0]["to_agent"], "ant")
        self.assertEqual(len(self.thread_notices(th, a["id"])), 1)
        self.assertTrue(self.tasks(thread_id=th)[a["id"]]["claimable"])

    def test_claim_refused_while_blocked(self):
        x = self.task("X")
        y = self.task("Y")
        w = self.task("W", metadata={"blocked_by": [x["id"], y["id"]]})
        err = self.hub.post("/v1/claims", {"owner_agent_id": "w1",
                                           "task_message_id": w["id"]})
        self.assertErr(err, 409)
        self.assertEqual(err[2]["blocked_by"], [x["id"], y["id"]])
        self.assertIn("task %d is blocked by open tasks: %d, %d" % (w["id"], x["id"], y["id"]),
                      err[2]["error"])
        self.complete(x["id"])
        err = self.hub.post("/v1/claims", {"owner_agent_id": "w1", "claim_key": uid("k"),
                                           "task_message_id": w["id"]})
        self.assertEqual(self.assertErr(err, 409),
                         "task %d is blocked by open tasks: %d" % (w["id"], y["id"]))
        self.assertEqual(notices(self.hub, w["id"], "unblocked"), [])   # not the last
        self.complete(y["id"])
        self.assertEqual(len(notices(self.hub, w["id"], "unblocked")), 1)
        cl = self.hub.post("/v1/claims", {"owner_agent_id": "w1", "task_message_id": w["id"]})
        self.assertTrue(self.assertOk(cl, 201)["owner_agent_id"] == "w1")
        self.assertIs(cl[2]["acquired"], True)

    def test_refused_blockers(self):
        base = self.task("base")
        latest = self.assertOk(self.hub.get("/v1/hub-info"))["latest_message_id"]
        nxt = latest + 1
        cases = [
            ({"blocked_by": [nxt]}, "metadata.blocked_by forms a cycle: task %d would "
                                    "wait for itself" % nxt),
            ({"blocked_by": [base["id"], 987654, 987655]},
             "metadata.blocked_by references unknown tasks: 987654, 987655"),
            ({"blocked_by": "1"}, "metadata.blocked_by must be a list of task ids"),
            ({"blocked_by": [1.5]}, "metadata.blocked_by must be a list of task ids"),
            ({"blocked_by": ["1"]}, "metadata.blocked_by must be a list of task ids"),
            ({"blocked_by": list(range(1, 66))},
             "metadata.blocked_by names more than 64 tasks (ARC_MAX_BLOCKERS)"),
        ]
        for meta, want in cases:
            with self.subTest(meta=meta):
                got = self.assertErr(self.hub.post("/v1/messages", {
                    "from_agent": "boss", "kind": "task", "body": "x", "metadata": meta}), 400)
                self.assertEqual(got, want)
        # Nothing of the refused posts was kept: the next id is still free.
        self.assertEqual(self.assertOk(self.hub.get("/v1/hub-info"))["latest_message_id"], latest)
        # Only tasks are checked; other kinds keep blocked_by as metadata.
        chat = self.msg(body="fyi", metadata={"blocked_by": [987654]})
        self.assertEqual(chat["metadata"], {"blocked_by": [987654]})
        # null and [] name no blockers.
        for meta in ({"blocked_by": None}, {"blocked_by": []}):
            t = self.task("free", metadata=meta)
            self.assertEqual(self.tasks()[t["id"]]["blocked_by"], [])
            self.assertTrue(self.tasks()[t["id"]]["claimable"])

    def test_cycle_through_rollup_refused(self):
        """A subtask may not wait for its ancestor, nor for a task that
        waits for one: the ancestor's rollup waits for the subtask."""
        root = self.task("root")
        mid = self.task("mid", parent_task_id=root["id"])
        other = self.task("other", metadata={"blocked_by": [root["id"]]})
        for blockers, detail in (
                ([root["id"]], "would wait for task %d, its ancestor" % root["id"]),
                ([other["id"]], "would wait for task %d, which waits for task %d, an ancestor"
                 % (other["id"], root["id"]))):
            got = self.assertErr(self.hub.post("/v1/messages", {
                "from_agent": "boss", "kind": "task", "body": "leaf",
                "parent_task_id": mid["id"], "metadata": {"blocked_by": blockers}}), 400)
            self.assertTrue(got.startswith("metadata.blocked_by forms a cycle: task "), got)
            self.assertIn(detail, got)
        # A sibling is fine.
        sib = self.task("sib", parent_task_id=mid["id"])
        ok = self.task("leaf", parent_task_id=mid["id"], metadata={"blocked_by": [sib["id"]]})
        self.assertEqual(self.tasks()[ok["id"]]["blocked_by"], [sib["id"]])

    def test_rollup_every_depth(self):
        """root <- k1 <- k2 <- {k3, k3b}: completing the last leaf completes
        k2, k1 and root, one rollup notice each, and unblocks root's waiter."""
        th = uid("th")
        root = self.task("root", thread_id=th)
        k1 = self.task("k1", parent_task_id=root["id"], thread_id=th)
        k2 = self.task("k2", parent_task_id=k1["id"], thread_id=th)
        k3 = self.task("k3", parent_task_id=k2["id"], thread_id=th)
        k3b = self.task("k3b", parent_task_id=k2["id"], thread_id=th)
        waiter = self.task("after", thread_id=th, metadata={"blocked_by": [root["id"]]})
        env = self.complete(k3["id"])
        self.assertNotIn("parent_completed", env)
        self.assertNotIn("rolled_up", env)
        self.assertEqual(self.tasks(thread_id=th)[k2["id"]]["status"], "open")
        env = self.complete(k3b["id"])
        self.assertIs(env["parent_completed"], True)
        self.assertEqual(env["rolled_up"], [k2["id"], k1["id"], root["id"]])
        ts = self.tasks(thread_id=th)
        for t in (root, k1, k2):
            self.assertEqual(ts[t["id"]]["status"], "done")
            got = self.thread_notices(th, t["id"], "auto_rollup")
            self.assertEqual(len(got), 1, got)
            self.assertEqual(got[0]["metadata"], {"auto_rollup": True, "parent_task_id": t["id"]})
        self.assertEqual(len(self.thread_notices(th, waiter["id"])), 1)
        self.assertTrue(ts[waiter["id"]]["claimable"])
        env = self.complete(k3b["id"])   # again: nothing more happens
        self.assertNotIn("rolled_up", env)
        self.assertEqual(len(self.thread_notices(th, root["id"], "auto_rollup")), 1)

    def test_repeat_completes_ancestors_left_open(self):
        """A parent completed without rollup (a task_result) leaves its own
        parent open; repeating the leaf's completion rolls up past it."""
        top = self.task("top")
        req = self.task("req", kind="task_request", parent_task_id=top["id"])
        leaf = self.task("leaf", parent_task_id=req["id"])
        self.complete(leaf["id"])   # rolls up into req and top
        self.assertEqual(self.tasks()[top["id"]]["status"], "done")
        top2 = self.task("top2")
        req2 = self.task("req2", kind="task_request", parent_task_id=top2["id"])
        leaf2 = self.task("leaf2", parent_task_id=req2["id"])
        self.msg(from_agent="x", kind="task_result", reply_to=req2["id"], body="r")
        self.assertEqual(self.tasks()[top2["id"]]["status"], "open")
        env = self.complete(leaf2["id"])
        self.assertEqual(env["rolled_up"], [top2["id"]])
        self.assertNotIn("parent_completed", env)
        self.assertEqual(self.tasks()[top2["id"]]["status"], "done")


@arc_only
class ForeignRowsTests(HubCase):
    """Task messages another process wrote straight into the file (the
    reference's shape: a message row, then a task row) are picked up."""

    def insert_task(self, body, meta):
        db = sqlite3.connect(self.hub.storage, timeout=10)
        try:
            with db:
                cur = db.execute(
                    "INSERT INTO messages(ts,from_agent,to_agent,channel,kind,body,"
                    "attachments_json,reply_to,thread_id,metadata_json) VALUES"
                    "('2026-01-01T00:00:00Z','ref',NULL,'general','task',?,'[]',NULL,NULL,?)",
                    (body, json.dumps(meta)))
                mid = cur.lastrowid
                db.execute("INSERT INTO tasks VALUES(?,NULL,'general',NULL,'open',"
                           "'2026-01-01T00:00:00Z',NULL)", (mid,))
            return mid
        finally:
            db.close()

    def test_raw_insert_picked_up(self):
        blocker = self.msg(kind="task", body="blocker")["id"]
        self.assertOk(self.hub.get("/v1/tasks"))   # the watermark moves past it
        w = self.insert_task("waits", {"blocked_by": [blocker, 10 ** 9, "x"]})
        bogus = self.insert_task("bogus", {"blocked_by": 5})   # not a list: ignored
        bad = self.insert_task("bad", {})
        db = sqlite3.connect(self.hub.storage, timeout=10)
        with db:
            db.execute("UPDATE messages SET metadata_json='{not json' WHERE id=?", (bad,))
        db.close()
        ts = {t["task_id"]: t for t in self.assertOk(self.hub.get("/v1/tasks"))}
        self.assertEqual(ts[w]["blocked_by"], [blocker])   # unknown and non-ids dropped
        self.assertFalse(ts[w]["claimable"])
        self.assertEqual(ts[bogus]["blocked_by"], [])
        self.assertEqual(ts[bad]["blocked_by"], [])
        self.assertErr(self.hub.post("/v1/claims", {"owner_agent_id": "z",
                                                    "task_message_id": w}), 409)
        self.hub.post("/v1/tasks/%d/complete" % blocker, {})
        self.assertEqual(len(notices(self.hub, w, "unblocked")), 1)
        self.assertOk(self.hub.post("/v1/claims", {"owner_agent_id": "z",
                                                   "task_message_id": w}), 201)

    def test_notice_addressed_to_claimant(self):
        """A claim the hub did not check (another process wrote it) makes
        its owner the notice's addressee, before the task's to_agent."""
        blocker = self.msg(kind="task", body="blocker")["id"]
        w = self.msg(kind="task", body="w", to_agent="assignee",
                     metadata={"blocked_by": [blocker]})["id"]
        db = sqlite3.connect(self.hub.storage, timeout=10)
        with db:
            db.execute("INSERT INTO claims VALUES('k-%d',NULL,?,'grabber',"
                       "'2026-01-01T00:00:00Z','2999-01-01T00:00:00Z',NULL,'{}')" % w, (w,))
        db.close()
        self.hub.post("/v1/tasks/%d/complete" % blocker, {})
        got = [m for m in self.assertOk(self.hub.get("/v1/inbox/grabber")) if m["reply_to"] == w]
        self.assertEqual(len(got), 1, got)
        self.assertEqual(got[0]["metadata"]["task_id"], w)
        self.assertEqual([m for m in self.assertOk(self.hub.get("/v1/inbox/assignee"))
                          if m["from_agent"] == "system"], [])

    def test_raw_insert_seen_by_completion_first(self):
        """The catch-up runs before a completion, not only before a list."""
        blocker = self.msg(kind="task", body="blocker")["id"]
        w = self.insert_task("waits", {"blocked_by": [blocker]})
        self.hub.post("/v1/tasks/%d/complete" % blocker, {})
        self.assertEqual(len(notices(self.hub, w, "unblocked")), 1)


@arc_only
class McpDepsTests(McpCase):
    """arc_post_message creates tasks with blocked_by and parent_task_id;
    arc_tasks shows what a task waits for and the rollup."""

    def test_mcp_create_list_complete(self):
        p = self.spawn()
        self.ready(p)
        post = lambda **a: p.call("arc_post_message", dict(channel="general", **a))
        c = post(body="C", kind="task")["structuredContent"]
        r = post(body="B", kind="task", blocked_by=[c["id"]])
        self.assertNotIn("isError", r, r)
        b = r["structuredContent"]
        self.assertEqual(b["metadata"], {"blocked_by": [c["id"]]})
        sub = post(body="S", kind="task", parent_task_id=b["id"],
                   blocked_by="%d, %d" % (c["id"], c["id"]))["structuredContent"]
        self.assertEqual(sub["metadata"], {"blocked_by": [c["id"], c["id"]]})
        bad = post(body="X", kind="task", blocked_by=[987654])
        self.assertIs(bad.get("isError"), True, bad)
        self.assertIn("unknown tasks: 987654", tool_text(bad))
        bad = post(body="X", kind="task", blocked_by=["x"])
        self.assertIs(bad.get("isError"), True, bad)
        lst = p.call("arc_tasks")
        tasks = {t["task_id"]: t for t in lst["structuredContent"]["tasks"]}
        self.assertEqual(tasks[b["id"]]["blocked_by"], [c["id"]])
        self.assertEqual((tasks[b["id"]]["status"], tasks[b["id"]]["claimable"]), ("open", False))
        self.assertIs(tasks[c["id"]]["claimable"], True)
        self.assertNotIn("isError", p.call("arc_tasks", {"complete_task_id": c["id"]}))
        done = p.call("arc_tasks", {"complete_task_id": sub["id"]})
        self.assertEqual(done["structuredContent"]["rolled_up"], [b["id"]])


@arc_only
class CliDepsTests(HubCase):
    """arc post --kind task --parent --blocked-by, and arc tasks."""

    def arc(self, *args):
        return subprocess.run(hub_command() + list(args), capture_output=True, text=True,
                              timeout=30, env=dict(os.environ, ARC_URL=self.hub.url))

    def test_post_and_list(self):
        c = json.loads(self.arc("post", "--agent", "cli-a", "--kind", "task", "C").stdout)
        p = json.loads(self.arc("post", "--agent", "cli-a", "--kind", "task", "P").stdout)
        run = self.arc("post", "--agent", "cli-a", "--kind", "task", "--parent", str(p["id"]),
                       "--blocked-by", "%d, %d" % (c["id"], p["id"]), "B")
        self.assertEqual(run.returncode, 1, run)   # p is an ancestor: a cycle
        self.assertIn("forms a cycle", run.stderr)
        run = self.arc("post", "--agent", "cli-a", "--kind", "task", "--parent", str(p["id"]),
                       "--blocked-by", "%d," % c["id"], "B")
        self.assertEqual(run.returncode, 2, run)
        self.assertIn("--blocked-by takes task ids", run.stderr)
        b = json.loads(self.arc("post", "--agent", "cli-a", "--kind", "task", "--parent",
                                str(p["id"]), "--blocked-by", str(c["id"]), "B").stdout)
        self.assertEqual(b["metadata"], {"blocked_by": [c["id"]]})
        run = self.arc("tasks", "--status", "open")
        self.assertEqual(run.returncode, 0, run)
        rows = {t["task_id"]: t for t in map(json.loads, run.stdout.splitlines())}
        self.assertEqual(rows[b["id"]]["parent_task_id"], p["id"])
        self.assertEqual(rows[b["id"]]["blocked_by"], [c["id"]])
        self.assertIs(rows[b["id"]]["claimable"], False)
        self.assertIs(rows[c["id"]]["claimable"], True)
        agents = self.assertOk(self.hub.get("/v1/agents"))
        self.assertEqual([a for a in agents if a["agent_id"] == "cli"], [])   # none registered
        self.assertEqual(self.arc("tasks", "--status", "nope").returncode, 1)


@arc_only
class ReferenceServesDepsTests(unittest.TestCase):
    """The extension tables do not disturb the reference: it still serves
    a file arc wrote dependencies into, and arc picks up the reference's
    blocked_by afterwards."""

    def setUp(self):
        if not reference_py():
            self.skipTest("reference hub (/tmp/ref/arc.py) not available")

    def test_round_trip(self):
        hub = Hub().start()
        self.addCleanup(hub.stop)
        post = lambda h, body: h.post("/v1/messages", body)[2]["result"]
        c = post(hub, {"from_agent": "a", "kind": "task", "body": "C"})
        b = post(hub, {"from_agent": "a", "kind": "task", "body": "B",
                       "metadata": {"blocked_by": [c["id"]]}})
        hub.post("/v1/tasks/%d/complete" % c["id"], {})
        ref = hand_over(self, hub, ref=True)
        tasks = ref.get("/v1/tasks")[2]["result"]
        self.assertEqual([t["task_id"] for t in tasks], [c["id"], b["id"]])
        self.assertNotIn("blocked_by", tasks[0])
        msgs = ref.get("/v1/messages", channel="general")[2]["result"]
        self.assertEqual(msgs[1]["metadata"], {"blocked_by": [c["id"]]})
        self.assertEqual(msgs[2]["metadata"]["unblocked"], True)
        a = post(ref, {"from_agent": "r", "kind": "task", "body": "A",
                       "metadata": {"blocked_by": [b["id"]]}})
        self.assertEqual(ref.post("/v1/claims", {"owner_agent_id": "r",
                                                 "task_message_id": c["id"]})[0], 201)
        hub2 = hand_over(self, ref)
        ts = {t["task_id"]: t for t in hub2.get("/v1/tasks")[2]["result"]}
        self.assertEqual(ts[a["id"]]["blocked_by"], [b["id"]])
        self.assertFalse(ts[a["id"]]["claimable"])
        self.assertTrue(ts[b["id"]]["claimable"])
        hub2.post("/v1/tasks/%d/complete" % b["id"], {})
        self.assertEqual(len(notices(hub2, a["id"], "unblocked")), 1)
        ref2 = hand_over(self, hub2, ref=True)
        self.assertEqual(len(ref2.get("/v1/tasks")[2]["result"]), 3)


if __name__ == "__main__":
    unittest.main()
