"""The delivery extension (arc:delivery, PROTOCOL §16): what is owed to an
agent's turns, surfaced exactly once across take, /v1/events?surfaced= and
parked long-polls; the deliverable set; bad input; the reference still
serving a file that holds the extension's tables."""

import sys
import threading
import unittest

from hubtest import Hub, HubCase, arc_only, reference_py, uid, wait_for


def ids(items):
    return [it["message"]["id"] for it in items]


@arc_only
class DeliveryTests(HubCase):

    def msg(self, **body):
        return self.assertOk(self.hub.post("/v1/messages", body), 201)

    def take(self, agent, status=200, **body):
        return self.assertOk(self.hub.post("/v1/delivery/%s/take" % agent, body), status)

    def peek(self, agent, **params):
        return self.assertOk(self.hub.get("/v1/delivery/%s" % agent, **params))

    def test_feature_token_last(self):
        info = self.assertOk(self.hub.get("/v1/hub-info"))
        self.assertIn("arc:delivery", info["features"])
        self.assertGreater(info["features"].index("arc:delivery"),
                           info["features"].index("arc:search"))

    def test_deliverable_set(self):
        a, b, c = uid("a"), uid("b"), uid("c")
        dm = self.msg(from_agent=b, to_agent=a, body="hello")
        req = self.msg(from_agent=b, to_agent=a, kind="task_request", body="do")
        self.msg(from_agent=b, to_agent=c, body="not for a")
        self.msg(from_agent=b, body="chatter, not for a")
        men = self.msg(from_agent=b, body="ask @%s. please" % a)
        self.msg(from_agent=b, body="mail x@%s or @%sx" % (a, a))  # no boundary
        mine = self.msg(from_agent=a, body="mine @%s" % a)          # own: never owed
        rep = self.msg(from_agent=c, body="re", reply_to=mine["id"])
        self.msg(from_agent=a, to_agent=a, body="note to self")
        got = self.take(a, via="hook")
        self.assertEqual(ids(got["items"]), [dm["id"], req["id"], men["id"], rep["id"]])
        self.assertEqual([it["reason"] for it in got["items"]],
                         ["dm", "request", "mention", "reply"])
        self.assertEqual(got["items"][0]["message"], dm)
        self.assertEqual(got["more"], 0)
        self.assertEqual(self.take(a)["items"], [])   # exactly once

    def test_recovery_notice_is_owed(self):
        a = uid("a")
        m = self.msg(from_agent="system", kind="notice", body="Recovered stale lock",
                     metadata={"recovery": True, "stale_agent_id": a, "file_path": "x"})
        self.assertEqual([(it["reason"], it["message"]["id"])
                          for it in self.take(a)["items"]], [("notice", m["id"])])

    def test_limit_max_chars_and_more(self):
        a = uid("a")
        sent = [self.msg(from_agent="b", to_agent=a, body="m%d " % i + "x" * 200)["id"]
                for i in range(5)]
        got = self.take(a, limit=2)
        self.assertEqual((ids(got["items"]), got["more"]), (sent[:2], 3))
        got = self.take(a, max_chars=10)   # the first always goes in
        self.assertEqual((ids(got["items"]), got["more"]), (sent[2:3], 2))
        p = self.peek(a)
        self.assertEqual((p["owed"], ids(p["items"])), (2, sent[3:]))
        self.assertEqual(self.peek(a, limit=0)["items"], [])
        self.assertEqual(ids(self.take(a)["items"]), sent[3:])
        self.assertEqual(self.peek(a)["owed"], 0)

    def test_events_surfaced_marks(self):
        a = uid("a")
        m1 = self.msg(from_agent="b", to_agent=a, body="one")
        other = self.msg(from_agent="b", to_agent=a, channel="elsewhere", body="two")
        got = self.assertOk(self.hub.get("/v1/events", agent_id=a, since_id=m1["id"] - 1,
                                         channel="direct", surfaced="poll"))
        self.assertEqual([m["id"] for m in got], [m1["id"]])
        # the filtered-out DM is still owed; the shown one is not
        self.assertEqual(ids(self.take(a)["items"]), [other["id"]])
        # without surfaced, a read marks nothing
        m3 = self.msg(from_agent="b", to_agent=a, body="three")
        self.assertOk(self.hub.get("/v1/events", agent_id=a, since_id=m3["id"] - 1))
        self.assertEqual(ids(self.take(a)["items"]), [m3["id"]])

    def test_parked_poll_marks(self):
        a = uid("a")
        seen = self.assertOk(self.hub.post("/v1/sessions", {"agent_id": a}), 201)["last_seen"]
        top = self.assertOk(self.hub.get("/v1/hub-info"))["latest_message_id"]
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", self.hub.get(
            "/v1/events", http_timeout=20, agent_id=a, since_id=top, timeout=10,
            surfaced="poll")))
        t.start()

        def touched():   # the accepted request touched the agent: it is parked
            agents = self.assertOk(self.hub.get("/v1/agents"))
            return any(s["agent_id"] == a and s["last_seen"] != seen for s in agents)
        wait_for(touched, timeout=10)
        m = self.msg(from_agent="b", to_agent=a, body="wake")
        t.join(15)
        self.assertEqual([x["id"] for x in self.assertOk(out["r"])], [m["id"]])
        self.assertEqual(self.take(a)["items"], [])   # not again through a hook

    def test_concurrent_takes_never_double(self):
        a = uid("a")
        sent = [self.msg(from_agent="b", to_agent=a, body="n%d" % i)["id"]
                for i in range(60)]
        seen, lock = [], threading.Lock()

        def worker():
            for _ in range(20):
                got = self.hub.post("/v1/delivery/%s/take" % a, {"limit": 3})[2]
                with lock:
                    seen.extend(ids(got["result"]["items"]))

        ts = [threading.Thread(target=worker) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        self.assertEqual(sorted(seen), sent)

    def test_requests_and_nudges(self):
        a = uid("a")
        req = self.msg(from_agent="b", to_agent=a, kind="task_request", body="q")
        self.assertEqual([r["message"]["id"] for r in self.peek(a)["requests"]], [req["id"]])
        for n in (1, 2, 3):
            got = self.assertOk(self.hub.post("/v1/delivery/%s/nudge" % a, {"max": 3}))
            self.assertEqual([(r["message"]["id"], r["nudges"]) for r in got["requests"]],
                             [(req["id"], n)])
        got = self.assertOk(self.hub.post("/v1/delivery/%s/nudge" % a, {"max": 3}))
        self.assertEqual(got["requests"], [])   # bounded
        self.msg(from_agent=a, to_agent="b", kind="task_result", body="done",
                 reply_to=req["id"])
        self.assertEqual(self.peek(a)["requests"], [])

    def test_bad_input(self):
        a = uid("a")
        for body, err in (({"limit": 0}, "limit must be at least 1"),
                          ({"limit": "x"}, "limit must be an integer"),
                          ({"max_chars": 0}, "max_chars must be at least 1"),
                          ({"via": "Hook!"}, "via must be"),
                          ({"via": "x" * 33}, "via must be")):
            with self.subTest(body=body):
                self.assertIn(err, self.assertErr(
                    self.hub.post("/v1/delivery/%s/take" % a, body), 400))
        self.assertErr(self.hub.request("POST", "/v1/delivery/%s/take" % a,
                                        raw_body=b"[1]"), 400)
        self.assertIn("limit must be", self.assertErr(
            self.hub.get("/v1/delivery/%s" % a, limit=-1), 400))
        self.assertIn("surfaced must be", self.assertErr(
            self.hub.get("/v1/events", agent_id=a, surfaced="A B"), 400))
        self.assertIn("max must be", self.assertErr(
            self.hub.post("/v1/delivery/%s/nudge" % a, {"max": 0}), 400))


@arc_only
class DeliveryForeignTests(unittest.TestCase):
    """Messages another process stored are indexed when arc next looks."""

    def test_second_hub_and_reference(self):
        hub = Hub().start()
        other = None
        try:
            other = Hub().start(storage=hub.storage)
            a = uid("a")
            m = other.post("/v1/messages", {"from_agent": "b", "to_agent": a,
                                            "body": "via the other hub"})[2]["result"]
            got = hub.post("/v1/delivery/%s/take" % a, {})[2]["result"]
            self.assertEqual(ids(got["items"]), [m["id"]])
            self.assertEqual(other.post("/v1/delivery/%s/take" % a, {})[2]["result"]["items"], [])
        finally:
            if other:
                other.stop()
            hub.stop()

    @unittest.skipUnless(reference_py(), "the reference's arc.py is not here")
    def test_reference_serves_the_file(self):
        hub = Hub().start()
        ref = None
        try:
            a = uid("a")
            hub.post("/v1/messages", {"from_agent": "b", "to_agent": a, "body": "one"})
            hub.post("/v1/delivery/%s/take" % a, {})
            storage = hub.storage
            hub.stop_process()
            ref = Hub(cmd=[sys.executable, reference_py()]).start(storage=storage)
            m = ref.post("/v1/messages", {"from_agent": "b", "body": "hi @%s" % a})
            self.assertEqual(m[0], 201, m)
            self.assertEqual(len(ref.get("/v1/messages", channel="general")[2]["result"]), 1)
            ref.stop_process()
            hub2 = Hub().start(storage=storage)
            try:
                got = hub2.post("/v1/delivery/%s/take" % a, {})[2]["result"]
                self.assertEqual([(it["reason"], it["message"]["id"]) for it in got["items"]],
                                 [("mention", m[2]["result"]["id"])])
            finally:
                hub2.stop()
        finally:
            if ref is not None:
                ref.stop()
            hub.stop()


if __name__ == "__main__":
    unittest.main()
