"""Full-text search, GET /v1/search (PROTOCOL §15): ranking, snippets,
filters, DM privacy, hostile queries, attachments, rows written by other
processes (raw SQLite, the reference hub) and the reference serving the file
afterwards.

Run: cd tests && ARC=$PWD/../arc python3 -m unittest test_search -v

The reference tests run when /tmp/ref/arc.py (or $ARC_REF_PY) exists. With
ARC_SQLITE_NOFTS=DIR, DIR holding a libsqlite3.so.0 built without FTS5
(e.g. `cc -O1 -fPIC -shared -o DIR/libsqlite3.so.0 sqlite3.c`), the
reference runs on that library, as a Python whose SQLite lacks FTS5 would.
"""

import json
import os
import sqlite3
import subprocess
import sys
import unittest

from hubtest import Hub, HubCase, arc_only, reference_py, uid, wait_for

NOFTS = os.environ.get("ARC_SQLITE_NOFTS")


def words(n, prefix="filler"):
    return " ".join("%s%d" % (prefix, i) for i in range(n))


@arc_only
class SearchTests(HubCase):

    def search(self, q, status=200, **params):
        params["q"] = q
        resp = self.hub.get("/v1/search", **params)
        if status != 200:
            return self.assertErr(resp, status)
        return self.assertOk(resp)

    def ids(self, q, **params):
        return [h["message"]["id"] for h in self.search(q, **params)]

    def test_feature_advertised(self):
        info = self.assertOk(self.hub.get("/v1/hub-info"))
        self.assertIn("arc:search", info["features"])

    def test_ranking(self):
        w = uid("rank").replace("-", "")
        once = self.msg(body="%s %s %s" % (words(40), w, words(40, "pad")))
        twice = self.msg(body="%s then %s" % (w, w))
        hits = self.search(w)
        self.assertEqual([h["message"]["id"] for h in hits], [twice["id"], once["id"]])
        self.assertGreater(hits[0]["score"], hits[1]["score"])
        self.assertEqual(hits[0]["message"], twice)   # the whole message, as GET renders it

    def test_snippet(self):
        w = uid("snip").replace("-", "")
        m = self.msg(body="%s %s %s" % (words(50), w, words(50, "tail")))
        hit = self.search(w)[0]
        self.assertEqual(hit["message"]["id"], m["id"])
        snip = hit["snippet"]
        self.assertIn("\u00ab%s\u00bb" % w, snip)
        self.assertIn("\u2026", snip)   # cut on both sides
        self.assertLessEqual(len(snip.split()), 16)
        self.assertLess(len(snip), len(m["body"]))

    def test_all_words_and_prefix(self):
        a, b = uid("alpha").replace("-", ""), uid("beta").replace("-", "")
        both = self.msg(body="%s and %s" % (a, b))
        only_a = self.msg(body="just %s" % a)
        self.assertEqual(self.ids("%s %s" % (a, b)), [both["id"]])
        self.assertCountEqual(self.ids(a), [both["id"], only_a["id"]])
        self.assertCountEqual(self.ids(a[:-3] + "*"), [both["id"], only_a["id"]])
        self.assertEqual(self.ids(a.upper()), self.ids(a))   # case-folded

    def test_filters(self):
        w = uid("filt").replace("-", "")
        ch = self.channel()
        m1 = self.msg(from_agent="fa", body="%s one" % w, channel=ch)
        m2 = self.msg(from_agent="fb", body="%s two" % w, channel="general", kind="notice")
        m3 = self.msg(from_agent="fa", body="%s three" % w, channel="general", kind="task")
        self.assertCountEqual(self.ids(w), [m1["id"], m2["id"], m3["id"]])
        self.assertEqual(self.ids(w, channel=ch), [m1["id"]])
        self.assertCountEqual(self.ids(w, **{"from": "fa"}), [m1["id"], m3["id"]])
        self.assertEqual(self.ids(w, kind="notice"), [m2["id"]])
        self.assertEqual(self.ids(w, kind="task", **{"from": "fa"}), [m3["id"]])
        self.assertEqual(len(self.search(w, limit=2)), 2)
        self.assertEqual(len(self.search(w, limit=100000)), 3)   # clamped, not refused
        self.assertIn("limit", self.search(w, 400, limit=0))
        self.assertIn("limit", self.search(w, 400, limit="x"))
        self.assertEqual(self.search(w, 404, channel=uid("nochan")), "channel not found")
        self.assertEqual(self.search(w, 400, kind="gossip"), "unsupported kind: gossip")

    def test_dm_privacy(self):
        w = uid("dm").replace("-", "")
        a, b, c = uid("a"), uid("b"), uid("c")
        dm = self.msg(from_agent=a, to_agent=b, channel="direct", body="secret %s" % w)
        pub = self.msg(from_agent=a, body="public %s" % w)
        self.assertCountEqual(self.ids(w, agent_id=a), [dm["id"], pub["id"]])   # sender
        self.assertCountEqual(self.ids(w, agent_id=b), [dm["id"], pub["id"]])   # recipient
        self.assertEqual(self.ids(w, agent_id=c), [pub["id"]])                  # third agent
        self.assertEqual(self.ids(w), [pub["id"]])                              # anonymous
        self.assertEqual(self.ids("secret " + w, agent_id=c), [])
        self.assertEqual(self.ids(w, agent_id=c, channel="direct"), [])

    def test_hostile_queries(self):
        w = uid("host").replace("-", "")
        m = self.msg(body='%s "quoted" (paren) NEAR AND OR NOT * ^ col:on' % w)
        for q in ['"', '""', '"""', "'", "(", ")", "()", "*", "**", "***", "^", "-", "+",
                  ":", "body:x", "attach:" + w, "NEAR", "NEAR(a b)", "NEAR(a b, 2)", "a NEAR b",
                  "AND", "OR", "NOT", "a AND", "OR b", "NOT NOT", "a OR OR b", "{body}: x",
                  "x*y", "*x", w + "**", '"%s' % w, '%s"' % w, "\\", "\u00e9*", "\U0001f600",
                  "a\tb\nc", "%s %s" % (w, "(" * 50), "rank:x", "MATCH", "'; DROP TABLE x; --"]:
            resp = self.hub.get("/v1/search", q=q)
            self.assertIn(resp[0], (200, 400), (q, resp))
            if resp[0] == 200:
                self.assertIsInstance(resp[2]["result"], list, q)
        # Operators are words: each of these finds the message above.
        for q in ['%s "quoted"' % w, "%s (paren)" % w, "%s NEAR" % w, "%s AND OR NOT" % w,
                  "%s col:on" % w, '"%s"' % w]:
            self.assertEqual(self.ids(q), [m["id"]], q)
        self.assertIn("NUL", self.search("a\0b", 400))
        self.assertEqual(self.search("", 400), "q query parameter is required")
        self.assertEqual(self.search(" \t ", 400), "q query parameter is required")
        self.assertErr(self.hub.get("/v1/search"), 400)
        self.assertIn("longer", self.search("x" * 1025, 400))
        self.assertErr(self.hub.request("GET", "/v1/search?q=%ff"), 400)   # not UTF-8

    def test_attachments(self):
        t = [uid(k).replace("-", "") for k in ("txt", "code", "json", "path", "desc")]
        m = self.msg(body="", attachments=[
            {"type": "text", "content": "some %s here" % t[0]},
            {"type": "code", "content": "int %s = 1;" % t[1], "language": "c"},
            {"type": "json", "content": {"key": [t[2]]}},
            {"type": "file_ref", "path": "src/%s.c" % t[3], "description": "about %s" % t[4]},
        ])
        for w in t:
            hits = self.search(w)
            self.assertEqual([h["message"]["id"] for h in hits], [m["id"]], w)
            self.assertIn("\u00ab", hits[0]["snippet"])

    def test_rows_written_by_another_process(self):
        """Rows a foreign writer put in the file (raw SQLite, the reference's
        row shape, bad attachments JSON included) are found."""
        w = uid("raw").replace("-", "")
        self.msg(body="warm up")
        self.search("warm")   # the index exists and is caught up
        db = sqlite3.connect(self.hub.storage, timeout=10)
        with db:
            rows = [("2026-01-01T00:00:00.000000Z", "rawer", None, "general", "chat",
                     "raw one %s" % w, '[{"type":"text","content":"inside %s"}]' % w),
                    ("2026-01-01T00:00:00.000000Z", "rawer", None, "general", "chat",
                     "raw two %s" % w, "not json ["),
                    ("2026-01-01T00:00:00.000000Z", "rawer", "rawee", "direct", "chat",
                     "raw dm %s" % w, '["a string", 5, null]')]
            db.executemany("INSERT INTO messages(ts,from_agent,to_agent,channel,kind,body,"
                           "attachments_json) VALUES(?,?,?,?,?,?,?)", rows)
        db.close()
        hits = self.search(w)
        self.assertEqual(len(hits), 2)
        self.assertEqual(len(self.search(w, agent_id="rawee")), 3)
        self.assertEqual(self.search("inside " + w)[0]["message"]["body"], "raw one %s" % w)

    def test_backlog_indexed_in_chunks(self):
        """A backlog bigger than one chunk (ARC_SEARCH_CHUNK, 1000) is
        answered at once with "pending", then indexed by the loop."""
        w = uid("bulk").replace("-", "")
        self.search("warm")
        db = sqlite3.connect(self.hub.storage, timeout=10)
        with db:
            db.executemany("INSERT INTO messages(ts,from_agent,channel,kind,body) "
                           "VALUES('2026-01-01T00:00:00Z','bulk','general','chat',?)",
                           (("bulk %d %s" % (i, w if i in (0, 44999) else "x"),)
                            for i in range(45000)))
        db.close()
        env = self.hub.get("/v1/search", q=w)[2]
        self.assertIs(env["ok"], True, env)
        self.assertEqual(env["pending"], 45000 - 1000)   # one chunk indexed
        # Meanwhile the hub serves others.
        self.msg(body="during the backlog")
        found = wait_for(lambda: len(self.search(w)) == 2 and
                         "pending" not in self.hub.get("/v1/search", q=w)[2], timeout=60)
        self.assertTrue(found)

    def test_score_is_bm25(self):
        """Below ARC_SEARCH_MAX_CANDIDATES rows per word, the score is FTS5's
        bm25(), sign flipped (arc_rank only bounds the document count)."""
        a, b = uid("sa").replace("-", ""), uid("sb").replace("-", "")
        for i in range(6):
            self.msg(body="%s %s %s" % (a, (b + " ") * (i % 3), words(i * 3)))
        hits = self.search("%s %s" % (a, b))
        self.assertEqual(len(hits), 4)
        db = sqlite3.connect(self.hub.storage, timeout=10)
        try:
            ref = dict(db.execute("SELECT rowid, -bm25(arc_search) FROM arc_search"
                                  " WHERE arc_search MATCH ?", ('"%s" "%s"' % (a, b),)))
        except sqlite3.OperationalError as e:   # a Python SQLite without FTS5
            self.skipTest(str(e))
        finally:
            db.close()
        for h in hits:
            self.assertAlmostEqual(h["score"], ref[h["message"]["id"]], places=4)
        self.assertEqual([h["message"]["id"] for h in hits],
                         sorted(ref, key=lambda i: (-ref[i], -i)))

    def test_window_of_newest_matches(self):
        """A search ranks only the newest ARC_SEARCH_MAX_CANDIDATES (2000)
        matches, filters applied within them; a full window says
        "truncated" and its oldest id, and before= searches older ones."""
        w = uid("win").replace("-", "")
        ch = self.channel()
        old = self.msg(body="%s %s" % (w, w), channel=ch)   # the best match, but old
        self.search("warm")
        db = sqlite3.connect(self.hub.storage, timeout=10)
        with db:
            db.executemany("INSERT INTO messages(ts,from_agent,channel,kind,body) "
                           "VALUES('2026-01-01T00:00:00Z','win','general','chat',?)",
                           (("%s newer %d %s" % (w, i, words(8)),) for i in range(2000)))
        db.close()
        # More than one chunk (ARC_SEARCH_CHUNK): wait for the backlog.
        wait_for(lambda: "pending" not in self.hub.get("/v1/search", q=w)[2], 30,
                 msg="the search backlog was never indexed")
        env = self.hub.get("/v1/search", q=w, channel=ch)[2]
        self.assertIs(env["ok"], True, env)
        self.assertEqual(env["result"], [])   # outside the window
        self.assertIs(env["truncated"], True)
        self.assertEqual(env["oldest_id"], old["id"] + 1)
        env = self.hub.get("/v1/search", q=w, limit=1)[2]
        self.assertNotEqual(env["result"][0]["message"]["id"], old["id"])
        self.assertEqual(env["oldest_id"], old["id"] + 1)
        env = self.hub.get("/v1/search", q=w, channel=ch, before=env["oldest_id"])[2]
        self.assertEqual([h["message"]["id"] for h in env["result"]], [old["id"]])
        self.assertIn("\u00ab%s\u00bb" % w, env["result"][0]["snippet"])
        self.assertNotIn("truncated", env)
        self.assertNotIn("oldest_id", env)
        self.assertEqual(self.ids(w, before=old["id"]), [])
        self.assertIn("before", self.search(w, 400, before=0))
        self.assertIn("before", self.search(w, 400, before="x"))
        self.assertNotIn("truncated", self.hub.get("/v1/search", q="warm")[2])

    def test_result_is_the_rendered_message(self):
        """A search result's message is the message GET /v1/messages renders."""
        w = uid("same").replace("-", "")
        ch = self.channel()
        m = self.msg(body="same %s" % w, channel=ch, metadata={"k": 1}, thread_id="t1")
        page = self.assertOk(self.hub.get("/v1/messages", channel=ch))
        self.assertEqual(self.search(w)[0]["message"], page[0])
        self.assertEqual(page[0], m)

    def test_cli(self):
        w = uid("cli").replace("-", "")
        a, b = uid("a"), uid("b")
        dm = self.msg(from_agent=a, to_agent=b, channel="direct", body="cli dm %s" % w)
        pub = self.msg(from_agent=a, body="cli pub %s" % w, kind="notice")
        env = dict(os.environ)
        env.pop("ARC_AGENT", None)

        def run(*args):
            p = subprocess.run(self.hub.cmd + ["search", "--base-url", self.hub.url] +
                               list(args), env=env, capture_output=True, text=True,
                               timeout=30)
            return p.returncode, [json.loads(l) for l in p.stdout.splitlines()], p.stderr

        rc, hits, _ = run(w)
        self.assertEqual((rc, [h["message"]["id"] for h in hits]), (0, [pub["id"]]))
        rc, hits, _ = run("--agent", b, "--limit", "5", w)
        self.assertEqual(rc, 0)
        self.assertCountEqual([h["message"]["id"] for h in hits], [dm["id"], pub["id"]])
        rc, hits, _ = run("--agent", b, "--channel", "direct", w)
        self.assertEqual([h["message"]["id"] for h in hits], [dm["id"]])
        rc, hits, _ = run("--from", a, "--kind", "notice", w)
        self.assertEqual([h["message"]["id"] for h in hits], [pub["id"]])
        rc, _, err = run("--kind", "gossip", w)
        self.assertEqual(rc, 1)
        self.assertIn("unsupported kind", err)
        self.assertEqual(run()[0], 2)
        self.assertEqual(run("--limit", "0", w)[0], 2)


def reference_env():
    """Environment for the reference: on a SQLite without FTS5 when
    ARC_SQLITE_NOFTS names a directory holding one."""
    if not NOFTS:
        return None
    return dict(os.environ, LD_LIBRARY_PATH=NOFTS)


class RefHub(Hub):
    """The reference hub, optionally on a SQLite without FTS5."""

    def __init__(self):
        super().__init__(cmd=[sys.executable, reference_py()])

    def _spawn(self):
        env = reference_env()
        if env is None:
            return super()._spawn()
        saved = os.environ.get("LD_LIBRARY_PATH")
        os.environ["LD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH"]
        try:
            return super()._spawn()
        finally:
            if saved is None:
                os.environ.pop("LD_LIBRARY_PATH", None)
            else:
                os.environ["LD_LIBRARY_PATH"] = saved


@arc_only
@unittest.skipUnless(reference_py(), "reference hub (/tmp/ref/arc.py) not available")
class ReferenceSearchTests(unittest.TestCase):
    """arc indexes what the reference wrote, while both serve one file, and
    the reference goes on serving the file with arc's index in it."""

    def setUp(self):
        self.hubs = []

    def tearDown(self):
        for h in self.hubs:
            h.stop()

    def start(self, hub, storage=None):
        self.hubs.append(hub)
        return hub.start(storage=storage)

    def ok(self, resp, status=200):
        self.assertEqual(resp[0], status, resp)
        return resp[2]["result"]

    def test_nofts_library_really_lacks_fts5(self):
        if not NOFTS:
            self.skipTest("ARC_SQLITE_NOFTS not set")
        out = subprocess.run(
            [sys.executable, "-c", "import sqlite3; c = sqlite3.connect(':memory:')\n"
             "try: c.execute('CREATE VIRTUAL TABLE t USING fts5(a)'); print('fts5')\n"
             "except sqlite3.OperationalError as e: print(e)"],
            env=reference_env(), capture_output=True, text=True, timeout=30)
        self.assertEqual(out.stdout.strip(), "no such module: fts5")

    def test_reference_rows_indexed_and_reference_still_serves(self):
        w = uid("ref").replace("-", "")
        ref = self.start(RefHub())
        before = self.ok(ref.post("/v1/messages", {"from_agent": "r", "body": "before %s" % w,
                                                   "attachments": [{"type": "text",
                                                                    "content": "refatt %s" % w}]}),
                         201)
        dm = self.ok(ref.post("/v1/messages", {"from_agent": "r", "to_agent": "s",
                                               "body": "refdm %s" % w}), 201)
        # arc opens the file while the reference serves it, and builds its index.
        arc = self.start(Hub(), storage=ref.storage)
        hits = self.ok(arc.get("/v1/search", q=w))
        self.assertEqual([h["message"] for h in hits], [before])
        self.assertCountEqual([h["message"]["id"] for h in
                               self.ok(arc.get("/v1/search", q=w, agent_id="s"))],
                              [before["id"], dm["id"]])
        self.assertEqual(self.ok(arc.get("/v1/search", q="refatt"))[0]["message"]["id"],
                         before["id"])
        # The reference writes on (the index is in the file now), arc finds it.
        after = self.ok(ref.post("/v1/messages", {"from_agent": "r", "body": "after %s" % w}),
                        201)
        ids = wait_for(lambda: [h["message"]["id"] for h in
                                self.ok(arc.get("/v1/search", q="after " + w))] or None)
        self.assertEqual(ids, [after["id"]])
        mine = self.ok(arc.post("/v1/messages", {"from_agent": "a", "body": "arcpost %s" % w}),
                       201)
        self.ok(arc.get("/v1/search", q="arcpost"))
        # The reference still serves the file: reads, writes, after a restart too.
        ref.stop_process()
        ref2 = self.start(RefHub(), storage=ref.storage)
        page = self.ok(ref2.get("/v1/messages", channel="general", limit=500))
        self.assertIn(mine["id"], [m["id"] for m in page])
        self.assertIn(after["id"], [m["id"] for m in page])
        last = self.ok(ref2.post("/v1/messages", {"from_agent": "r", "body": "last %s" % w}), 201)
        self.ok(ref2.get("/v1/threads"))
        self.ok(ref2.get("/v1/hub-info"))
        ids = wait_for(lambda: [h["message"]["id"] for h in
                                self.ok(arc.get("/v1/search", q="last " + w))] or None)
        self.assertEqual(ids, [last["id"]])


if __name__ == "__main__":
    unittest.main()
