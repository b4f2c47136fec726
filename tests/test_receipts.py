"""Receipts, acks, unanswered requests and presence (PROTOCOL §17,
extensions arc:receipts and arc:presence) on the real binary.

A receipt is one (message, recipient) pair: queued until a path surfaces
it (arc:delivery, §16), then read, acked, answered. The tests drive each
transition through each transport they can: HTTP, the file relay (the
CLI with --relay-dir), a poll with surfaced=, `arc mcp`'s tools, and a
hook's take. Escalation runs with a one-second --escalate-after; presence
follows a real child process that exits, and a pid whose start time does
not match.
"""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hubtest import (Hub, HubCase, arc_only, hand_over, hub_command, reference_py,  # noqa: E402
                     uid, wait_for)
from test_mcp import McpProc, tool_text  # noqa: E402

V1_SESSION_KEYS = {"session_id", "agent_id", "display_name", "capabilities", "metadata",
                   "created_at", "last_seen", "active"}


def proc_start(pid):
    """Field 22 of /proc/PID/stat: the start time in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


class ReceiptCase(HubCase):
    hub_args = ("--escalate-after", "3600")

    def ok(self, resp, status=200):
        return self.assertOk(resp, status)

    def send(self, frm, to=None, body="hello", **extra):
        msg = {"from_agent": frm, "body": body}
        if to:
            msg["to_agent"] = to
        msg.update(extra)
        return self.ok(self.hub.post("/v1/messages", msg), 201)

    def receipts(self, mid):
        got = self.ok(self.hub.get("/v1/messages/%d/receipts" % mid))
        self.assertEqual(got["message_id"], mid)
        return {r["agent_id"]: r for r in got["receipts"]}

    def receipt(self, mid, agent):
        return self.receipts(mid)[agent]

    def register(self, agent, **extra):
        body = {"agent_id": agent, "replace": True}
        body.update(extra)
        return self.ok(self.hub.post("/v1/sessions", body), 201)

    def cli(self, *args):
        return subprocess.run(hub_command() + list(args), capture_output=True, text=True,
                              timeout=30, env=dict(os.environ, ARC_URL=self.hub.url))


@arc_only
class ReceiptLifeTests(ReceiptCase):
    """Every transition of a receipt, each through a transport."""

    def test_dm_life_over_http(self):
        a, b = uid("alice"), uid("bob")
        self.register(a)
        m = self.send(a, b, "the build is red", metadata={"ack_required": True})
        r = self.receipt(m["id"], b)
        self.assertEqual((r["state"], r["reason"], r["waiting"]), ("queued", "dm", "ack"))
        self.assertEqual(r["queued_at"], m["ts"])
        self.assertEqual(r["recipient"]["state"], "offline")
        self.assertEqual(r["summary"], "queued — recipient never seen")
        # b was here once and left: the receipt says since when
        sess = self.register(b)
        self.ok(self.hub.delete("/v1/sessions/" + sess["session_id"]))
        r = self.receipt(m["id"], b)
        self.assertTrue(r["summary"].startswith("queued — recipient offline since "), r)
        since = r["recipient"]["state_since"]
        self.assertTrue(since and since >= sess["created_at"], r)
        # a hook's take surfaces it
        took = self.ok(self.hub.post("/v1/delivery/%s/take" % b, {"via": "hook"}))
        self.assertEqual([i["message"]["id"] for i in took["items"]], [m["id"]])
        r = self.receipt(m["id"], b)
        self.assertEqual((r["state"], r["surfaced_via"]), ("surfaced", "hook"))
        self.assertIsNotNone(r["surfaced_at"])
        # reading the inbox reads it
        self.ok(self.hub.get("/v1/inbox/" + b, tail=1))
        r = self.receipt(m["id"], b)
        self.assertEqual((r["state"], r["read_via"]), ("read", "inbox"))
        # ack: idempotent, the first time stays; the wait for it ends
        first = self.ok(self.hub.post("/v1/messages/%d/ack" % m["id"], {"agent_id": b}))
        self.assertEqual((first["state"], first["waiting"]), ("acked", None))
        again = self.ok(self.hub.post("/v1/messages/%d/ack" % m["id"], {"agent_id": b}))
        self.assertEqual(again["acked_at"], first["acked_at"])
        self.assertEqual(again["read_at"], r["read_at"])
        # a reply answers it
        rep = self.send(b, a, "fixed", reply_to=m["id"])
        r = self.receipt(m["id"], b)
        self.assertEqual((r["state"], r["answered_by"]), ("answered", rep["id"]))
        self.assertEqual(r["summary"], "answered by #%d at %s" % (rep["id"], r["answered_at"]))
        # the sender's reply-to-reply is no receipt of b's message
        self.assertEqual(list(self.receipts(rep["id"])), [a])

    def test_request_life_poll_thread_result(self):
        a, b = uid("alice"), uid("bob")
        thread = uid("th")
        req = self.send(a, b, "review PR 7", kind="task_request", thread_id=thread)
        r = self.receipt(req["id"], b)
        self.assertEqual((r["reason"], r["state"], r["waiting"]), ("request", "queued", "request"))
        owed = self.ok(self.hub.get("/v1/unanswered", agent_id=b))
        self.assertEqual([(u["message_id"], u["from_agent"], u["waiting"]) for u in owed],
                         [(req["id"], a, "request")])
        asked = self.ok(self.hub.get("/v1/unanswered", from_agent=a))
        self.assertEqual([u["agent_id"] for u in asked], [b])
        self.assertEqual(self.ok(self.hub.get("/v1/unanswered", agent_id=b, older_than=3600)), [])
        # a poll with surfaced= surfaces it
        got = self.ok(self.hub.get("/v1/events", agent_id=b, since_id=req["id"] - 1,
                                   surfaced="poll"))
        self.assertIn(req["id"], [x["id"] for x in got])
        self.assertEqual(self.receipt(req["id"], b)["surfaced_via"], "poll")
        # reading the thread as b reads it; without agent_id nobody reads
        self.ok(self.hub.get("/v1/threads/" + thread))
        self.assertEqual(self.receipt(req["id"], b)["state"], "surfaced")
        self.ok(self.hub.get("/v1/threads/" + thread, agent_id=b))
        r = self.receipt(req["id"], b)
        self.assertEqual((r["state"], r["read_via"]), ("read", "thread"))
        # acking a request does not answer it
        self.ok(self.hub.post("/v1/messages/%d/ack" % req["id"], {"agent_id": b}))
        self.assertEqual(len(self.ok(self.hub.get("/v1/unanswered", agent_id=b))), 1)
        res = self.send(b, a, "LGTM", kind="task_result", reply_to=req["id"], thread_id=thread)
        r = self.receipt(req["id"], b)
        self.assertEqual((r["state"], r["answered_by"], r["waiting"]),
                         ("answered", res["id"], None))
        self.assertEqual(self.ok(self.hub.get("/v1/unanswered", agent_id=b)), [])

    def test_request_done_by_complete_leaves_the_list(self):
        a, b = uid("alice"), uid("bob")
        req = self.send(a, b, "x", kind="task_request")
        self.assertEqual(len(self.ok(self.hub.get("/v1/unanswered", agent_id=b))), 1)
        self.ok(self.hub.post("/v1/tasks/%d/complete" % req["id"], {}))
        self.assertEqual(self.ok(self.hub.get("/v1/unanswered", agent_id=b)), [])

    def test_mentions_and_who_may_ack(self):
        a, c, d = uid("alice"), uid("carol"), uid("dave")
        m = self.send(a, None, "@%s and @%s: please confirm" % (c, d), channel="general",
                      metadata={"ack_required": True})
        rs = self.receipts(m["id"])
        self.assertEqual(sorted(rs), sorted([c, d]))
        self.assertEqual({r["reason"] for r in rs.values()}, {"mention"})
        code, _, env = self.hub.post("/v1/messages/%d/ack" % m["id"], {"agent_id": a})
        self.assertEqual(code, 409, env)
        self.assertEqual(self.hub.post("/v1/messages/999999999/ack", {"agent_id": c})[0], 404)
        self.assertEqual(self.hub.get("/v1/messages/999999999/receipts")[0], 404)
        self.assertEqual(self.hub.post("/v1/messages/%d/ack" % m["id"], {})[0], 400)
        self.ok(self.hub.post("/v1/messages/%d/ack" % m["id"], {"agent_id": c}))
        left = self.ok(self.hub.get("/v1/unanswered", from_agent=a))
        self.assertEqual([u["agent_id"] for u in left], [d])
        # a message that asks nothing waits for nobody
        plain = self.send(a, c, "fyi")
        self.assertEqual(self.receipt(plain["id"], c)["waiting"], None)

    def test_relay_and_cli(self):
        """The CLI through the file relay: arc poll surfaces (poll), arc ack
        acks, arc receipts and arc unanswered report."""
        a, b = uid("alice"), uid("bob")
        spool = os.path.join(self.hub.dir, "spool")
        m = self.send(a, b, "over the relay", metadata={"ack_required": True})
        p = self.cli("poll", "--agent", b, "--relay-dir", spool, "--timeout", "0",
                     "--since-id", str(m["id"] - 1))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.receipt(m["id"], b)["surfaced_via"], "poll")
        p = self.cli("unanswered", "--agent", b, "--relay-dir", spool)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(x) for x in p.stdout.splitlines()]
        self.assertEqual([x["message_id"] for x in lines], [m["id"]])
        p = self.cli("ack", "--agent", b, "--relay-dir", spool, str(m["id"]))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["state"], "acked")
        p = self.cli("receipts", str(m["id"]))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["receipts"][0]["state"], "acked")
        p = self.cli("ack", "--agent", a, str(m["id"]))
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertEqual(self.cli("ack", str(m["id"])).returncode, 2)
        self.assertEqual(self.cli("receipts", "nope").returncode, 2)

    def test_mcp_poll_read_ack_receipts(self):
        a, b = uid("alice"), uid("bob")
        p = McpProc(["--agent", b, "--base-url", self.hub.url, "--no-autostart"])
        try:
            p.initialize()
            p.call("arc_whoami")   # registered, its read cursor set
            thread = uid("th")
            m = self.send(a, b, "via mcp", kind="task_request", thread_id=thread,
                          metadata={"ack_required": True})
            res = p.call("arc_poll_messages", {"timeout": 5})
            self.assertFalse(res.get("isError"), res)
            self.assertEqual(self.receipt(m["id"], b)["surfaced_via"], "mcp")
            res = p.call("arc_read_thread", {"thread_id": thread})
            self.assertFalse(res.get("isError"), res)
            self.assertEqual(self.receipt(m["id"], b)["read_via"], "thread")
            owe = p.call("arc_unanswered", {})
            self.assertEqual([u["message_id"] for u in
                              owe["structuredContent"]["unanswered"]], [m["id"]])
            res = p.call("arc_ack", {"message_id": m["id"]})
            self.assertFalse(res.get("isError"), res)
            self.assertEqual(json.loads(tool_text(res))["receipt"]["state"], "acked")
            res = p.call("arc_task_result", {"task_id": m["id"], "body": "done"})
            self.assertFalse(res.get("isError"), res)
            res = p.call("arc_receipts", {"message_id": m["id"]})
            got = res["structuredContent"]["receipts"]
            self.assertEqual([(r["agent_id"], r["state"]) for r in got], [(b, "answered")])
            self.assertEqual(p.call("arc_unanswered", {"side": "asked"})
                             ["structuredContent"]["unanswered"], [])
            self.assertTrue(p.call("arc_ack", {})["isError"])
        finally:
            p.cleanup()


@arc_only
class DigestTests(ReceiptCase):

    def test_digest_of_what_arrived_while_away(self):
        a, b = uid("alice"), uid("bob")
        sess = self.register(b)
        self.assertEqual(set(sess), V1_SESSION_KEYS)   # v1 asks nothing more
        self.ok(self.hub.delete("/v1/sessions/" + sess["session_id"]))
        left_at = self.ok(self.hub.get("/v1/presence", agent_id=b))[0]
        self.assertEqual(left_at["state"], "offline")
        ids = [self.send(a, b, "while away")["id"],
               self.send(a, None, "@%s look" % b, channel="general")["id"],
               self.send(a, b, "still away")["id"], self.send(a, b, "and now")["id"]]
        r = self.receipt(ids[0], b)
        self.assertEqual(r["summary"], "queued — recipient offline since " +
                         left_at["state_since"])
        code, _, env = self.hub.post("/v1/sessions?digest=1", {"agent_id": b})
        self.assertEqual(code, 201, env)
        d = env["result"]["digest"]
        self.assertEqual(d["away_since"], left_at["state_since"])
        self.assertEqual(d["owed"], 4)
        self.assertEqual([i["message"]["id"] for i in d["items"]], ids)   # oldest first
        self.assertEqual([i["reason"] for i in d["items"]], ["dm", "mention", "dm", "dm"])
        # a digest marks nothing: still owed, still queued
        self.assertEqual(self.receipt(ids[0], b)["state"], "queued")
        self.assertEqual(self.ok(self.hub.get("/v1/delivery/" + b))["owed"], 4)


@arc_only
class EscalationTests(ReceiptCase):
    hub_args = ("--escalate-after", "1", "--escalate-channel", "escalations")

    def notices(self):
        code, _, env = self.hub.get("/v1/messages", channel="escalations")
        return env["result"] if code == 200 else []

    def test_one_notice_per_message_naming_who_owes_whom(self):
        a, b, c = uid("alice"), uid("bob"), uid("carol")
        req = self.send(a, b, "ship it?", kind="task_request")
        ack = self.send(a, None, "@%s @%s read the RFC" % (b, c), channel="general",
                        metadata={"ack_required": True})
        answered = self.send(a, c, "quick one", kind="task_request")
        self.send(c, a, "yes", kind="task_result", reply_to=answered["id"])

        def two():
            got = [n for n in self.notices() if n["metadata"].get("from_agent") == a]
            return got if len(got) >= 2 else None
        got = wait_for(two, timeout=10, msg="escalation notices")
        by = {n["metadata"]["message_id"]: n for n in got}
        self.assertEqual(sorted(by), sorted([req["id"], ack["id"]]))
        n = by[req["id"]]
        self.assertEqual(n["from_agent"], "system")
        self.assertEqual(n["reply_to"], req["id"])   # its author is told (a reply)
        self.assertEqual(n["metadata"]["waiting_on"], [b])
        self.assertIn("@%s has not answered %s's task_request #%d" % (b, a, req["id"]),
                      n["body"])
        m = by[ack["id"]]
        self.assertEqual(sorted(m["metadata"]["waiting_on"]), sorted([b, c]))
        self.assertIn("not acknowledged", m["body"])
        # escalated once: a later check posts nothing more for them
        later = self.send(a, c, "second", kind="task_request")
        wait_for(lambda: any(x["metadata"].get("message_id") == later["id"]
                             for x in self.notices()), timeout=10, msg="third notice")
        ids = [x["metadata"]["message_id"] for x in self.notices()
               if x["metadata"].get("from_agent") == a]
        self.assertEqual(sorted(ids), sorted([req["id"], ack["id"], later["id"]]))
        u = {x["message_id"]: x for x in self.ok(self.hub.get("/v1/unanswered",
                                                               from_agent=a))}
        self.assertIsNotNone(u[req["id"]]["escalated_at"])
        self.assertNotIn(answered["id"], u)
        # the notice reaches the agent who owes (a mention) and the asker (a reply)
        owed = self.ok(self.hub.get("/v1/delivery/" + b, limit=50))
        self.assertIn(n["id"], [i["message"]["id"] for i in owed["items"]])


@arc_only
class PresenceTests(ReceiptCase):

    def presence(self, agent):
        got = self.ok(self.hub.get("/v1/presence", agent_id=agent))
        self.assertEqual(len(got), 1)
        return got[0]

    def test_states_from_hooks(self):
        a = uid("agent")
        self.assertEqual(self.presence(a)["state"], "offline")
        sess = self.register(a)
        p = self.presence(a)
        self.assertEqual((p["state"], p["live"]), ("present", True))
        seen = []
        for state in ("working", "working", "waiting", "idle"):
            got = self.ok(self.hub.post("/v1/agents/%s/state" % a, {"state": state}))
            self.assertEqual(got["state"], state)
            seen.append(got["state_since"])
        self.assertEqual(seen[0], seen[1])   # unchanged state: the same since
        self.assertLess(seen[1], seen[2])
        listed = {s["agent_id"]: s for s in self.ok(self.hub.get("/v1/agents", presence=1))}
        self.assertEqual((listed[a]["state"], listed[a]["state_since"]), ("idle", seen[3]))
        plain = {s["agent_id"]: s for s in self.ok(self.hub.get("/v1/agents"))}
        self.assertNotIn("state", plain[a])   # v1 readers see v1 fields only
        self.assertEqual(self.hub.post("/v1/agents/%s/state" % a, {"state": "asleep"})[0], 400)
        got = self.ok(self.hub.post("/v1/agents/%s/state" % a, {"state": "offline"}))
        self.assertEqual((got["state"], got["live"]), ("offline", False))
        self.assertNotIn(a, {s["agent_id"] for s in self.ok(self.hub.get("/v1/agents"))})
        self.assertEqual(self.hub.delete("/v1/sessions/" + sess["session_id"])[0], 404)
        # a hook-only agent (no session) is working while it reports
        h = uid("hooked")
        self.ok(self.hub.post("/v1/agents/%s/state" % h, {"state": "working"}))
        self.assertEqual(self.presence(h)["state"], "working")

    def test_process_exit_is_offline_at_once(self):
        a = uid("agent")
        child = subprocess.Popen(["sleep", "60"])
        try:
            self.register(a, pid=child.pid, pid_start=proc_start(child.pid))
            self.ok(self.hub.post("/v1/claims", {"claim_key": uid("k"), "owner_agent_id": a}),
                    201)
            p = self.presence(a)
            self.assertEqual((p["state"], p["pid"]), ("present", child.pid))
            self.ok(self.hub.post("/v1/agents/%s/state" % a, {"state": "working"}))
            child.kill()
            child.wait()
            t0 = time.monotonic()
            wait_for(lambda: self.presence(a)["state"] == "offline", timeout=5,
                     msg="offline after the process ended")
            self.assertLess(time.monotonic() - t0, 4)   # not the 120 s TTL
            self.assertNotIn(a, {s["agent_id"] for s in self.ok(self.hub.get("/v1/agents"))})
            claims = self.ok(self.hub.get("/v1/claims", owner_agent_id=a, active_only=1))
            self.assertEqual(claims, [])
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()

    def test_pid_reuse_is_not_the_agent(self):
        """A live pid with another start time is another process: the hub
        does not watch it (it may be a pid of another pid namespace, a
        sandbox's, naming some process here), so the agent is not taken
        offline for it; one whose start time matches is watched."""
        a = uid("agent")
        me = os.getpid()
        self.register(a, pid=me, pid_start=proc_start(me) + 1)
        p = self.presence(a)
        self.assertEqual(p["state"], "present")
        self.assertIsNone(p.get("pid"), p)
        b = uid("agent")
        self.register(b, pid=me, pid_start=proc_start(me))
        time.sleep(1.5)   # two checks of a live pid (1 s apart): still there
        self.assertEqual(self.presence(b)["state"], "present")
        for bad in ({"pid": me}, {"pid": 1, "pid_start": 5}, {"pid": "x", "pid_start": 1}):
            self.assertEqual(self.hub.post("/v1/sessions", dict(agent_id=uid("x"), **bad))[0],
                             400, bad)

    def test_arc_mcp_registers_its_harness(self):
        a = uid("agent")
        p = McpProc(["--agent", a, "--base-url", self.hub.url, "--no-autostart"])
        try:
            p.initialize()
            got = wait_for(lambda: self.presence(a)["live"] and self.presence(a), msg="live")
            self.assertEqual(got["pid"], os.getpid())   # this test runs arc mcp
        finally:
            p.cleanup()


@arc_only
class FeatureTests(ReceiptCase):

    def test_features_and_help(self):
        info = self.ok(self.hub.get("/v1/hub-info"))
        self.assertIn("arc:receipts", info["features"])
        self.assertIn("arc:presence", info["features"])
        out = subprocess.run(hub_command() + ["serve", "--help"], capture_output=True,
                             text=True, timeout=10).stdout
        self.assertIn("--escalate-after", out)
        self.assertIn("--escalate-channel", out)


@arc_only
@unittest.skipUnless(reference_py(), "the reference's arc.py is not here (set ARC_REF_PY)")
class ReceiptsReferenceTests(unittest.TestCase):
    """A file holding receipts, waits and presence: the reference serves
    it, and arc finds them intact, indexing the reference's writes."""

    def test_reference_serves_a_file_with_receipts(self):
        arc = Hub().start(["--escalate-after", "3600"])
        self.addCleanup(arc.stop)
        post = lambda h, m: h.post("/v1/messages", m)
        req = post(arc, {"from_agent": "a", "to_agent": "b", "kind": "task_request",
                         "body": "q", "metadata": {"ack_required": True}})[2]["result"]
        arc.post("/v1/messages/%d/ack" % req["id"], {"agent_id": "b"})
        arc.post("/v1/agents/b/state", {"state": "working"})
        before = arc.get("/v1/messages", channel="direct")[2]["result"]
        ref = hand_over(self, arc, ref=True)
        code, _, env = ref.get("/v1/messages", channel="direct")
        self.assertEqual(code, 200, env)
        self.assertEqual(env["result"], before)
        code, _, env = post(ref, {"from_agent": "b", "to_agent": "a", "kind": "task_result",
                                  "reply_to": req["id"], "body": "answer"})
        self.assertEqual(code, 201, env)
        res_id = env["result"]["id"]
        self.assertEqual(ref.post("/v1/sessions", {"agent_id": "c"})[0], 201)
        again = hand_over(self, ref, extra_args=["--escalate-after", "3600"])
        got = again.get("/v1/messages/%d/receipts" % req["id"])[2]["result"]["receipts"]
        self.assertEqual(len(got), 1)
        r = got[0]
        self.assertIsNotNone(r["acked_at"])
        # the reference's task_result answers it once arc indexes it
        self.assertEqual((r["state"], r["answered_by"]), ("answered", res_id))
        self.assertEqual(again.get("/v1/unanswered")[2]["result"], [])


if __name__ == "__main__":
    unittest.main()
