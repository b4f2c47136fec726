"""The delivery extension (arc:delivery, PROTOCOL §16): what is owed to an
agent's turns, surfaced exactly once across take, /v1/events?surfaced= and
parked long-polls; the deliverable set; bad input; the reference still
serving a file that holds the extension's tables."""

import json
import threading
import unittest

from hubtest import (Hub, HubCase, HTTPReader, arc_only, connect, hand_over, qs,
                     reference_py, uid, wait_for)
from test_hook import run_hook
from test_mcp import McpCase, tool_json


def ids(items):
    return [it["message"]["id"] for it in items]


def raw_get(path):
    return ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode()


def raw_post(path, body):
    data = json.dumps(body).encode()
    return ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n" % (path, len(data))).encode() + data


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

    def events(self, agent, since, **params):
        got = self.assertOk(self.hub.get("/v1/events", agent_id=agent, since_id=since,
                                         **params))
        return [m["id"] for m in got]

    def park(self, agent, since, via, timeout=10):
        """A long-poll of agent's events with surfaced=via on a socket of its
        own; parked once this returns (the hub handled it before the round
        trip that follows it). Returns its reader."""
        sock = connect(self.hub.port, timeout=timeout + 10)
        self.addCleanup(sock.close)
        sock.sendall(raw_get(qs("/v1/events", agent_id=agent, since_id=since,
                                timeout=timeout, surfaced=via)))
        self.assertOk(self.hub.get("/v1/hub-info"))
        return HTTPReader(sock, timeout + 10)

    def answer(self, reader):
        resp = reader.read_response()
        self.assertEqual(resp.status, 200, resp)
        return [m["id"] for m in resp.json()["result"]]

    def test_take_then_poll(self):
        """What a take surfaced, no read with surfaced returns again (any
        via); a read without surfaced (v1) returns it as before."""
        a = uid("a")
        m = self.msg(from_agent="b", to_agent=a, body="taken")
        chat = self.msg(from_agent="b", body="chatter")
        self.assertEqual(ids(self.take(a, via="hook")["items"]), [m["id"]])
        since = m["id"] - 1
        for via in ("poll", "mcp", "take"):
            self.assertEqual(self.events(a, since, surfaced=via), [chat["id"]])
        self.assertEqual(self.events(a, since, surfaced="poll", channel="direct"), [])
        self.assertEqual(self.events(a, since), [m["id"], chat["id"]])
        # a page counts what it returns: the limit is not spent on left-outs
        self.assertEqual(self.events(a, since, surfaced="poll", limit=1), [chat["id"]])

    def test_poll_then_other_paths(self):
        """What one read with surfaced returned, a take and reads through
        any via (its own too) do not return again."""
        a = uid("a")
        m = self.msg(from_agent="b", to_agent=a, body="polled")
        men = self.msg(from_agent="b", body="hi @%s" % a)
        since = m["id"] - 1
        self.assertEqual(self.events(a, since, surfaced="mcp"), [m["id"], men["id"]])
        self.assertEqual(self.take(a)["items"], [])
        self.assertEqual(self.events(a, since, surfaced="poll"), [])
        self.assertEqual(self.events(a, since, surfaced="mcp"), [])
        self.assertEqual(self.events(a, since), [m["id"], men["id"]])

    def test_parked_poll_after_take_in_the_same_turn(self):
        """A DM stored and taken in one turn (one connection, pipelined)
        does not also answer a parked read with surfaced: the answer from
        the turn's batch leaves it out, and the read waits on."""
        a = uid("a")
        top = self.assertOk(self.hub.get("/v1/hub-info"))["latest_message_id"]
        reader = self.park(a, top, "poll")
        sock = connect(self.hub.port, timeout=20)
        self.addCleanup(sock.close)
        sock.sendall(raw_post("/v1/messages", {"from_agent": "b", "to_agent": a,
                                               "body": "taken in the turn"}) +
                     raw_post("/v1/delivery/%s/take" % a, {"via": "hook"}))
        w = HTTPReader(sock, 20)
        m1 = w.read_response().json()["result"]
        took = w.read_response().json()["result"]
        self.assertEqual(ids(took["items"]), [m1["id"]])
        m2 = self.msg(from_agent="b", to_agent=a, body="after")
        self.assertEqual(self.answer(reader), [m2["id"]])
        self.assertEqual(self.take(a)["items"], [])

    def test_two_parked_polls_one_fanout(self):
        """Two parked reads with surfaced of one agent, woken by one post:
        one answers with it, the other waits for the next."""
        a = uid("a")
        top = self.assertOk(self.hub.get("/v1/hub-info"))["latest_message_id"]
        r1, r2 = self.park(a, top, "poll"), self.park(a, top, "mcp")
        m1 = self.msg(from_agent="b", to_agent=a, body="one")
        chat = self.msg(from_agent="b", body="chatter")   # nobody's: both see it
        m2 = self.msg(from_agent="b", to_agent=a, body="two")
        got = sorted([self.answer(r1), self.answer(r2)])
        self.assertEqual(sum(x.count(m1["id"]) for x in got), 1, got)
        self.assertIn([m1["id"]], got)
        rest = got[1] if got[0] == [m1["id"]] else got[0]
        self.assertTrue(rest in ([chat["id"]], [chat["id"], m2["id"]]), got)
        self.assertEqual(ids(self.take(a)["items"]), [] if m2["id"] in rest else [m2["id"]])

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
class DeliveryMcpTests(McpCase):
    """arc_poll_messages (surfaced=mcp, run in the hub) after a hook."""

    def test_mcp_poll_after_hook_take(self):
        p = self.spawn()
        self.ready(p)
        dm = self.post("bob", "for the turn " + uid("t"), channel="direct",
                       to_agent=p.agent)
        r = run_hook(self.hub.url, "claude", "PostToolUse", {"cwd": "/"}, agent=p.agent)
        self.assertIn(dm["body"], r.stdout)
        got = tool_json(p.call("arc_poll_messages", {"timeout": 0}), "arc_poll_messages")
        self.assertNotIn(dm["id"], [m["id"] for m in got])
        # a waiting poll: a DM taken in the turn it is stored is left out
        # (whether the poll is parked by then or runs after), the next is not
        call = p.send_request("tools/call", {"name": "arc_poll_messages",
                                             "arguments": {"timeout": 10}})
        sock = connect(self.hub.port, timeout=20)
        self.addCleanup(sock.close)
        sock.sendall(raw_post("/v1/messages", {"from_agent": "bob", "to_agent": p.agent,
                                               "body": "taken at once"}) +
                     raw_post("/v1/delivery/%s/take" % p.agent, {"via": "hook"}))
        w = HTTPReader(sock, 20)
        m1 = w.read_response().json()["result"]
        self.assertEqual(ids(w.read_response().json()["result"]["items"]), [m1["id"]])
        m2 = self.post("bob", "next", channel="direct", to_agent=p.agent)
        res = p.answer(call)["result"]
        self.assertEqual([m["id"] for m in tool_json(res, "arc_poll_messages")], [m2["id"]])


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
        self.addCleanup(hub.stop)
        a = uid("a")
        hub.post("/v1/messages", {"from_agent": "b", "to_agent": a, "body": "one"})
        hub.post("/v1/delivery/%s/take" % a, {})
        ref = hand_over(self, hub, ref=True)
        m = ref.post("/v1/messages", {"from_agent": "b", "body": "hi @%s" % a})
        self.assertEqual(m[0], 201, m)
        self.assertEqual(len(ref.get("/v1/messages", channel="general")[2]["result"]), 1)
        hub2 = hand_over(self, ref)
        got = hub2.post("/v1/delivery/%s/take" % a, {})[2]["result"]
        self.assertEqual([(it["reason"], it["message"]["id"]) for it in got["items"]],
                         [("mention", m[2]["result"]["id"])])


if __name__ == "__main__":
    unittest.main()
