"""Shared memory, the arc:kv extension (PROTOCOL.md §13): PUT/GET/DELETE
/v1/kv/{key}, GET /v1/kv, GET /v1/kv/{key}/history, compare-and-set,
history, listing, limits, change notices, and the reference hub still
serving a file that holds the extension's tables."""

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hubtest import (Hub, HubCase, arc_only, hand_over, hub_command, qs,  # noqa: E402
                     reference_py, uid)


def kpath(key, suffix=""):
    """The path of a key: one segment, '/' and all percent-encoded."""
    return "/v1/kv/" + urllib.parse.quote(key, safe="") + suffix


class KvCase(HubCase):
    def put(self, key, value, agent="alice", **fields):
        body = {"agent_id": agent, "value": value}
        body.update(fields)
        return self.hub.request("PUT", kpath(key), body=body)

    def get_key(self, key):
        return self.hub.request("GET", kpath(key))

    def delete_key(self, key, agent="alice", **params):
        return self.hub.request("DELETE", qs(kpath(key), agent_id=agent, **params))

    def history(self, key, **params):
        return self.hub.get(kpath(key, "/history"), **params)


@arc_only
class KvTests(KvCase):

    def test_feature_and_limits_advertised(self):
        info = self.assertOk(self.hub.get("/v1/hub-info"))
        self.assertIn("arc:kv", info["features"])
        self.assertEqual(info["max_kv_value_chars"], 65536)
        self.assertEqual(info["max_kv_key_bytes"], 256)

    def test_put_get_update(self):
        key = uid("decisions") + "/db"
        row = self.assertOk(self.put(key, {"engine": "postgres"}, type="decision"), 201)
        self.assertEqual(row["key"], key)
        self.assertEqual(row["value"], {"engine": "postgres"})
        self.assertEqual(row["type"], "decision")
        self.assertEqual(row["version"], 1)
        self.assertEqual((row["created_by"], row["updated_by"]), ("alice", "alice"))
        self.assertTimestamp(row["created_at"])
        self.assertEqual(self.assertOk(self.get_key(key)), row)
        # an update answers 200, keeps the type and the creator
        row2 = self.assertOk(self.put(key, [1, "two", None], agent="bob"))
        self.assertEqual((row2["version"], row2["type"]), (2, "decision"))
        self.assertEqual((row2["created_by"], row2["updated_by"]), ("alice", "bob"))
        self.assertEqual(row2["created_at"], row["created_at"])
        self.assertEqual(row2["value"], [1, "two", None])
        # null is a value like any other; a new key without type is a note
        other = uid("k")
        row3 = self.assertOk(self.put(other, None), 201)
        self.assertEqual((row3["value"], row3["type"]), (None, "note"))
        self.assertErr(self.get_key(uid("missing")), 404)

    def test_cas_conflict_409_with_current_row(self):
        key = uid("cas")
        self.assertOk(self.put(key, "a", version=0), 201)        # create-only
        err = self.put(key, "b", agent="bob", version=0)          # exists now
        self.assertErr(err, 409)
        self.assertEqual(err[2]["current"]["version"], 1)
        self.assertEqual(err[2]["current"]["value"], "a")
        self.assertOk(self.put(key, "b", agent="bob", version=1))
        # a writer that read version 1 loses against bob's version 2
        code, _, env = self.put(key, "c", agent="carol", version=1)
        self.assertEqual(code, 409, env)
        self.assertIs(env["ok"], False)
        self.assertIn("version", env["error"])
        self.assertEqual(env["current"]["version"], 2)
        self.assertEqual(env["current"]["value"], "b")
        self.assertEqual(env["current"]["updated_by"], "bob")
        self.assertEqual(self.assertOk(self.get_key(key))["value"], "b")   # unchanged
        # a refused write is not in the history either
        self.assertEqual([h["version"] for h in self.assertOk(self.history(key))], [1, 2])
        # a CAS on a key never written expects 0
        err = self.put(uid("none"), 1, version=5)
        self.assertErr(err, 409)
        self.assertIsNone(err[2]["current"])
        self.assertErr(self.put(key, 1, version=-1), 400)
        self.assertErr(self.put(key, 1, version="x"), 400)

    def test_concurrent_cas_one_wins(self):
        key = uid("race")
        self.assertOk(self.put(key, 0), 201)
        results = []

        def writer(i):
            results.append(self.put(key, i, agent="w%d" % i, version=1)[0])

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(results), [200] + [409] * 7)
        self.assertEqual(self.assertOk(self.get_key(key))["version"], 2)

    def test_history_order_and_authors(self):
        key = uid("hist")
        self.assertOk(self.put(key, 1, agent="alice", type="fact"), 201)
        self.assertOk(self.put(key, 2, agent="bob"))
        self.assertOk(self.put(key, 3, agent="carol", type="constraint"))
        hist = self.assertOk(self.history(key))
        self.assertEqual([(h["version"], h["op"], h["agent_id"], h["value"], h["type"])
                          for h in hist],
                         [(1, "put", "alice", 1, "fact"), (2, "put", "bob", 2, "fact"),
                          (3, "put", "carol", 3, "constraint")])
        for h in hist:
            self.assertEqual(h["key"], key)
            self.assertTimestamp(h["at"])
        self.assertLessEqual(hist[0]["at"], hist[1]["at"])
        self.assertLessEqual(hist[1]["at"], hist[2]["at"])
        # paging: since_version is exclusive, limit cuts with "more"
        self.assertEqual([h["version"] for h in self.assertOk(self.history(key, since_version=1))],
                         [2, 3])
        code, _, env = self.history(key, limit=2)
        self.assertEqual(code, 200)
        self.assertEqual([h["version"] for h in env["result"]], [1, 2])
        self.assertIs(env.get("more"), True)
        self.assertNotIn("more", self.history(key, limit=3)[2])
        self.assertErr(self.history(uid("never")), 404)
        self.assertErr(self.history(key, limit=0), 400)

    def test_prefix_and_type_listing(self):
        ns = uid("ns")
        keys = {ns + "/a/1": "fact", ns + "/a/2": "decision", ns + "/ab": "fact",
                ns + "/b/1": "fact", ns + "/a": "note"}
        for k, t in keys.items():
            self.assertOk(self.put(k, k, type=t), 201)
        self.assertOk(self.put(ns + "x/a/1", 0), 201)     # shares no prefix "ns/"

        def names(**params):
            return [r["key"] for r in self.assertOk(self.hub.get("/v1/kv", **params))]

        self.assertEqual(names(prefix=ns + "/"), sorted(keys))
        self.assertEqual(names(prefix=ns + "/a/"), [ns + "/a/1", ns + "/a/2"])
        self.assertEqual(names(prefix=ns + "/a"), [ns + "/a", ns + "/a/1", ns + "/a/2", ns + "/ab"])
        self.assertEqual(names(prefix=ns + "/", type="fact"), [ns + "/a/1", ns + "/ab", ns + "/b/1"])
        self.assertEqual(names(prefix=ns + "/a/", type="decision"), [ns + "/a/2"])
        self.assertEqual(names(prefix=ns + "/zzz"), [])
        rows = self.assertOk(self.hub.get("/v1/kv", prefix=ns + "/a/"))
        self.assertEqual(rows[0]["value"], ns + "/a/1")
        # paging with after= and limit=, "more" while rows remain
        code, _, env = self.hub.get("/v1/kv", prefix=ns + "/", limit=2)
        self.assertEqual([r["key"] for r in env["result"]], sorted(keys)[:2])
        self.assertIs(env.get("more"), True)
        code, _, env = self.hub.get("/v1/kv", prefix=ns + "/", limit=2, after=sorted(keys)[1])
        self.assertEqual([r["key"] for r in env["result"]], sorted(keys)[2:4])
        self.assertEqual(names(prefix=ns + "/", after=sorted(keys)[3]), sorted(keys)[4:])
        self.assertErr(self.hub.get("/v1/kv", type="opinion"), 400)
        self.assertErr(self.hub.get("/v1/kv", prefix="a\x00b"), 400)
        # every live key, without a prefix
        self.assertTrue(set(keys) <= set(names(limit=500)))

    def test_delete_and_recreate_keep_counting(self):
        key = uid("del")
        self.assertOk(self.put(key, "v1", agent="alice", type="decision"), 201)
        self.assertOk(self.put(key, "v2", agent="alice"))
        self.assertErr(self.delete_key(key, agent="bob", version=1), 409)   # stale
        change = self.assertOk(self.delete_key(key, agent="bob", version=2))
        self.assertEqual((change["key"], change["version"], change["op"], change["value"],
                          change["agent_id"], change["type"]),
                         (key, 3, "delete", None, "bob", "decision"))
        self.assertErr(self.get_key(key), 404)
        self.assertErr(self.delete_key(key), 404)
        self.assertNotIn(key, [r["key"] for r in self.assertOk(self.hub.get("/v1/kv", prefix=key))])
        # a CAS made before the delete fails after it; "absent" is version 0
        err = self.put(key, "stale", agent="carol", version=2)
        self.assertErr(err, 409)
        self.assertIsNone(err[2]["current"])
        self.assertErr(self.put(key, "stale", agent="carol", version=3), 409)
        row = self.assertOk(self.put(key, "v4", agent="carol", version=0), 201)
        self.assertEqual((row["version"], row["created_by"], row["type"]), (4, "carol", "note"))
        hist = self.assertOk(self.history(key))
        self.assertEqual([(h["version"], h["op"], h["agent_id"]) for h in hist],
                         [(1, "put", "alice"), (2, "put", "alice"), (3, "delete", "bob"),
                          (4, "put", "carol")])

    def test_refusals(self):
        self.assertOk(self.put("k" * 256, 1), 201)
        self.assertOk(self.put("é" * 128, 1), 201)                         # 256 bytes
        self.assertErr(self.put("k" * 257, 1), 400)
        self.assertErr(self.put("é" * 128 + "x", 1), 400)
        for bad in ("a\x01b", "tab\there", "del\x7f"):
            self.assertErr(self.put(bad, 1), 400)
            self.assertErr(self.get_key(bad), 400)
        self.assertErr(self.hub.request("PUT", "/v1/kv/a%00b", body={"agent_id": "a", "value": 1}), 400)
        key = uid("r")
        self.assertErr(self.hub.request("PUT", kpath(key), body={"agent_id": "a"}), 400)
        self.assertErr(self.hub.request("PUT", kpath(key), body={"value": 1}), 400)
        self.assertErr(self.hub.request("PUT", kpath(key), body={"agent_id": "a\x00", "value": 1}), 400)
        self.assertErr(self.put(key, 1, type="opinion"), 400)
        self.assertErr(self.hub.request("PUT", kpath(key), raw_body=b"{"), 400)
        self.assertErr(self.hub.request("PUT", kpath(key), raw_body=b"[1]"), 400)
        self.assertErr(self.hub.request("PUT", kpath(key), raw_body=b'{"agent_id":"a","value":"\xff"}'), 400)
        deep = 1
        for _ in range(64):
            deep = [deep]
        self.assertOk(self.put(key, deep), 201)                            # 64 levels
        self.assertErr(self.put(key, [deep]), 400)                         # 65
        self.assertErr(self.put(key, "x" * 65535), 400)                    # 65537 encoded
        self.assertOk(self.put(key, "x" * 65534))                          # 65536
        self.assertErr(self.hub.request("DELETE", kpath(key)), 400)        # no agent_id
        self.assertErr(self.delete_key(key, version="x"), 400)
        self.assertErr(self.hub.request("POST", kpath(key), body={"agent_id": "a", "value": 1}), 404)
        # the refused writes left the key where it was
        self.assertEqual(self.assertOk(self.get_key(key))["version"], 2)

    def test_key_with_slashes_and_history_suffix(self):
        # a key is one path segment: its '/' travel as %2F, so a key that
        # ends in /history is not its own history
        key = uid("x") + "/history"
        self.assertOk(self.put(key, "mine"), 201)
        self.assertEqual(self.assertOk(self.get_key(key))["value"], "mine")
        self.assertEqual(len(self.assertOk(self.history(key))), 1)
        self.assertErr(self.hub.request("PUT", "/v1/kv/a/b", body={"agent_id": "a", "value": 1}), 404)

    def test_notice_wakes_a_long_poll(self):
        watcher = uid("watcher")
        self.session(watcher)
        since = self.assertOk(self.hub.get("/v1/hub-info"))["latest_message_id"]
        got = {}

        def poll():
            got["resp"] = self.hub.get("/v1/events", http_timeout=30, agent_id=watcher,
                                       since_id=since, timeout=20)

        t = threading.Thread(target=poll)
        t0 = time.monotonic()
        t.start()
        time.sleep(0.3)   # let it park (the answer would come either way)
        key = uid("wake")
        self.assertOk(self.put(key, {"v": 1}, agent="writer", type="fact"), 201)
        t.join(20)
        self.assertFalse(t.is_alive())
        self.assertLess(time.monotonic() - t0, 10)
        msgs = self.assertOk(got["resp"])
        notes = [m for m in msgs if m["metadata"].get("kv", {}).get("key") == key]
        self.assertEqual(len(notes), 1, msgs)
        m = notes[0]
        self.assertEqual((m["kind"], m["channel"], m["from_agent"]), ("notice", "memory", "writer"))
        self.assertEqual(m["metadata"]["kv"], {"op": "put", "key": key, "version": 1, "type": "fact"})
        self.assertIn(key, m["body"])
        # a delete is announced too, and the writer's own notices are
        # skipped by exclude_self
        self.assertOk(self.delete_key(key, agent="writer"))
        mine = self.assertOk(self.hub.get("/v1/events", agent_id="writer", since_id=m["id"],
                                          exclude_self=1))
        self.assertFalse([x for x in mine if x["metadata"].get("kv", {}).get("key") == key])
        seen = self.assertOk(self.hub.get("/v1/events", agent_id=watcher, since_id=m["id"]))
        dels = [x["metadata"]["kv"] for x in seen if x["metadata"].get("kv", {}).get("key") == key]
        self.assertEqual(dels, [{"op": "delete", "key": key, "version": 2, "type": "fact"}])
        self.assertIn("memory", [c["name"] for c in self.assertOk(self.hub.get("/v1/channels"))])

    def test_notice_reaches_a_stream(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.hub.port, timeout=15)
        conn.request("GET", qs("/v1/stream", agent_id=uid("s"), channels="memory"))
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        key = uid("sse")
        self.assertOk(self.put(key, 7, agent="streamer"), 201)
        deadline = time.monotonic() + 10
        found = None
        try:
            while found is None and time.monotonic() < deadline:
                line = resp.fp.readline().decode()
                if line.startswith("data:"):
                    m = json.loads(line[5:])
                    if m.get("metadata", {}).get("kv", {}).get("key") == key:
                        found = m
        finally:
            conn.close()
        self.assertIsNotNone(found)
        self.assertEqual(found["metadata"]["kv"]["version"], 1)


@arc_only
class KvLimitTests(KvCase):
    hub_args = ("--max-kv-value-chars", "10")

    def test_value_limit_is_an_option(self):
        self.assertEqual(self.assertOk(self.hub.get("/v1/hub-info"))["max_kv_value_chars"], 10)
        self.assertOk(self.put(uid("k"), "12345678"), 201)                 # 10 encoded
        err = self.assertErr(self.put(uid("k"), "123456789"), 400)
        self.assertIn("max_kv_value_chars", err)
        self.assertOk(self.put(uid("k"), [1, 2, 3]), 201)                  # "[1, 2, 3]": 9


@arc_only
class KvCliTests(KvCase):
    """arc kv get|put|list|del|history against the hub."""

    def kv(self, *args, agent=None, input=None):
        env = {k: v for k, v in os.environ.items() if k not in ("ARC_URL", "ARC_AGENT")}
        if agent:
            env["ARC_AGENT"] = agent
        return subprocess.run(hub_command() + ["kv"] + [str(a) for a in args] +
                              ["--base-url", self.hub.url], env=env, input=input,
                              capture_output=True, text=True, timeout=30)

    def ok(self, proc, code=0):
        self.assertEqual(proc.returncode, code, (proc.stdout, proc.stderr))
        return proc.stdout

    def test_commands(self):
        ns = uid("cli")
        row = json.loads(self.ok(self.kv("put", ns + "/db", '{"engine": "pg"}', "--type",
                                         "decision", agent="alice")))
        self.assertEqual((row["value"], row["version"], row["updated_by"]),
                         ({"engine": "pg"}, 1, "alice"))
        # not JSON: a string; - reads stdin
        row = json.loads(self.ok(self.kv("put", ns + "/s", "hello world", agent="bob")))
        self.assertEqual(row["value"], "hello world")
        row = json.loads(self.ok(self.kv("put", ns + "/in", "-", agent="bob", input="[1, 2]\n")))
        self.assertEqual(row["value"], [1, 2])
        self.assertEqual(json.loads(self.ok(self.kv("get", ns + "/db")))["type"], "decision")
        lines = self.ok(self.kv("list", "--prefix", ns + "/")).splitlines()
        self.assertEqual([json.loads(x)["key"] for x in lines], [ns + "/db", ns + "/in", ns + "/s"])
        lines = self.ok(self.kv("list", "--prefix", ns + "/", "--type", "decision")).splitlines()
        self.assertEqual(len(lines), 1)
        # a lost compare-and-set: exit 1, the error on stderr, the current row on stdout
        p = self.kv("put", ns + "/db", "x", "--version", "7", agent="carol")
        self.assertEqual(p.returncode, 1, p)
        self.assertIn("version mismatch", p.stderr)
        self.assertEqual(json.loads(p.stdout)["version"], 1)
        change = json.loads(self.ok(self.kv("del", ns + "/db", "--version", "1", agent="carol")))
        self.assertEqual((change["op"], change["version"], change["agent_id"]),
                         ("delete", 2, "carol"))
        self.assertEqual(self.kv("get", ns + "/db").returncode, 1)
        hist = [json.loads(x) for x in self.ok(self.kv("history", ns + "/db")).splitlines()]
        self.assertEqual([(h["version"], h["op"]) for h in hist], [(1, "put"), (2, "delete")])

    def test_usage(self):
        for args in (("nope",), ("get",), ("put", "k"), ("list", "k"), ("get", "k", "v"),
                     ("put", "k", "1"), ("del", "k")):
            with self.subTest(args=args):
                p = self.kv(*args)
                self.assertEqual(p.returncode, 2, p)
                self.assertTrue(p.stderr.startswith("arc kv: "), p.stderr)
        self.assertIn("usage: arc kv", self.ok(self.kv("--help")))


@arc_only
@unittest.skipUnless(reference_py(), "the reference's arc.py is not here (set ARC_REF_PY)")
class KvReferenceTests(unittest.TestCase):
    """arc's kv tables in the file do not disturb the reference hub: it
    serves the file, its writes go on, and arc finds its memory intact."""

    def test_reference_serves_the_file(self):
        arc = Hub().start()
        self.addCleanup(arc.stop)
        p = lambda key, body: arc.request("PUT", kpath(key), body=body)
        self.assertEqual(p("team/db", {"agent_id": "a", "value": "pg", "type": "decision"})[0], 201)
        self.assertEqual(p("team/db", {"agent_id": "b", "value": "sqlite"})[0], 200)
        self.assertEqual(arc.request("DELETE", qs(kpath("team/db"), agent_id="c"))[0], 200)
        self.assertEqual(p("team/style", {"agent_id": "a", "value": {"indent": 4}})[0], 201)
        before = arc.get("/v1/messages", channel="general")[2]["result"]
        ref = hand_over(self, arc, ref=True)
        code, _, env = ref.get("/v1/messages", channel="memory")
        self.assertEqual(code, 200, env)
        self.assertEqual([m["metadata"]["kv"]["version"] for m in env["result"]], [1, 2, 3, 1])
        self.assertEqual(ref.get("/v1/messages", channel="general")[2]["result"], before)
        code, _, env = ref.post("/v1/messages", {"from_agent": "ref", "body": "after kv"})
        self.assertEqual(code, 201, env)
        after_id = env["result"]["id"]
        code, _, env = ref.post("/v1/sessions", {"agent_id": "ref-agent"})
        self.assertEqual(code, 201, env)
        again = hand_over(self, ref)
        got = again.request("GET", kpath("team/style"))[2]
        self.assertEqual(got["result"]["value"], {"indent": 4})
        self.assertEqual(again.request("GET", kpath("team/db"))[0], 404)
        hist = again.get(kpath("team/db", "/history"))[2]["result"]
        self.assertEqual([h["version"] for h in hist], [1, 2, 3])
        code, _, env = again.request("PUT", kpath("team/db"),
                                     body={"agent_id": "d", "value": 1, "version": 0})
        self.assertEqual((code, env["result"]["version"]), (201, 4), env)
        notes = again.get("/v1/messages", channel="memory")[2]["result"]
        self.assertGreater(notes[-1]["id"], after_id)


if __name__ == "__main__":
    unittest.main()
