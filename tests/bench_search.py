"""Search benchmark (PROTOCOL §15); Python 3 standard library only.

usage: python3 tests/bench_search.py [--messages N] [--arc ./arc] [--keep DIR]

--keep DIR builds the store in DIR once and reuses it on later runs (to
compare two binaries on one 1M store without building it twice).

Builds a store of N messages written by another process (the way a file
written by the reference looks to arc: no search index yet): the hub makes
the schema on an empty file and stops, then this script inserts the rows
with Python's sqlite3 (bodies of 8-24 words from a 3,000-word vocabulary
with a Zipf-like skew, 8% direct messages, 5% with a text attachment).
Then it starts the hub on the file and measures:
  - first search: the answer to the first search (one chunk indexed,
    ARC_SEARCH_CHUNK, the rest "pending"), and the time until the loop has
    indexed the whole backlog (no "pending" left);
  - warm searches, one keep-alive connection: p50/p99 for a rare word, a
    common word, two words, a prefix and a filtered (channel + from) query;
  - the storage file's size before and after indexing.
Prints one JSON object; tests/bench.py runs it for `make bench` (search_100k).
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(arc, storage, d):
    port = free_port()
    p = subprocess.Popen(arc + ["--host", "127.0.0.1", "--port", str(port), "--storage", storage,
                                "--spool-dir", os.path.join(d, "spool"), "--quiet"],
                         cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v1/hub-info")
            if c.getresponse().status == 200:
                c.close()
                return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("hub did not start")


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def fill(storage, n, seed=1):
    rnd = random.Random(seed)
    vocab = ["w%04d" % i for i in range(3000)]
    weights = [1.0 / (i + 1) for i in range(3000)]
    agents = ["agent%02d" % i for i in range(20)]
    db = sqlite3.connect(storage)
    db.execute("PRAGMA synchronous=OFF")

    def rows():
        for i in range(n):
            body = " ".join(rnd.choices(vocab, weights, k=rnd.randint(8, 24)))
            frm = rnd.choice(agents)
            to, ch = (rnd.choice(agents), "direct") if rnd.random() < 0.08 else (None, "general")
            att = "[]"
            if rnd.random() < 0.05:
                att = json.dumps([{"type": "text", "content": " ".join(rnd.choices(vocab, k=20))}],
                                 separators=(",", ":"))
            yield ("2026-01-01T00:00:00.000000Z", frm, to, ch, "chat", body, att)

    with db:
        db.executemany("INSERT INTO messages(ts,from_agent,to_agent,channel,kind,body,"
                       "attachments_json) VALUES(?,?,?,?,?,?,?)", rows())
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def get(conn, path):
    t = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    body = json.loads(r.read())
    return (time.perf_counter() - t) * 1000, r.status, body


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--arc", default=os.environ.get("ARC", os.path.join(ROOT, "arc")))
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--keep", help="build the store in DIR and keep it; reuse it if it exists")
    args = ap.parse_args()
    arc = args.arc.split()
    d = args.keep or tempfile.mkdtemp(prefix="arc-bench-search-")
    os.makedirs(d, exist_ok=True)
    storage = os.path.join(d, "arc.sqlite3")
    out = {"messages": args.messages}
    try:
        if not os.path.exists(storage):
            p, _ = start(arc, storage, d)
            stop(p)
            t = time.perf_counter()
            fill(storage, args.messages)
            out["fill_s"] = round(time.perf_counter() - t, 2)
        out["size_before_mb"] = round(os.path.getsize(storage) / 1e6, 1)
        p, port = start(arc, storage, d)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            t0 = time.perf_counter()
            ms, status, body = get(conn, "/v1/search?q=w0100")
            out["first_search_ms"] = round(ms, 1)
            out["first_pending"] = body.get("pending", 0)
            while body.get("pending"):
                time.sleep(0.05)
                _, status, body = get(conn, "/v1/search?q=w0100&limit=1")
            out["index_all_s"] = round(time.perf_counter() - t0, 2)
            queries = {"rare": "q=w2999", "common": "q=w0001", "two_words": "q=w0001%20w0500",
                       "prefix": "q=w29*", "filtered": "q=w0010&channel=general&from=agent03",
                       "dm_view": "q=w0010&agent_id=agent05"}
            for name, qs in queries.items():
                lat = []
                for _ in range(args.samples):
                    ms, status, body = get(conn, "/v1/search?" + qs)
                    assert status == 200, body
                    lat.append(ms)
                out[name] = {"p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2),
                             "hits": len(body["result"])}
            conn.close()
        finally:
            stop(p)
        out["size_after_mb"] = round(os.path.getsize(storage) / 1e6, 1)
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
