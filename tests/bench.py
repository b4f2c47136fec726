"""Benchmark driver for arc (`make bench`); Python 3 standard library only.

usage: python3 tests/bench.py [--only NAME,...] [--list]
  ARC   the hub command under test (default ./arc)
  REF   optional second hub command, e.g. REF="python3 path/to/arc.py"; every
        measurement then also runs against it, and the table adds its
        figures and the ratio arc/REF
  BENCH the load generator (default tests/bench, built from tests/bench.c)
  BENCH_TMP  where the temporary hub directories go (default: the system's)
  BENCH_STORE  messages in the large store (default 1000000; 200000 for a
        quicker run; 0 skips every large-store measurement)

Every run starts a fresh hub (`CMD --host 127.0.0.1 --port P --storage
DIR/arc.sqlite3 --spool-dir DIR/spool --quiet`, working directory DIR) on a
free port and a new temporary directory, runs one `tests/bench` subcommand
against it and stops it with SIGTERM. Each measurement runs several times;
the table shows the median and the min-max over those runs. Raw figures go
to tests/out/bench.json.

The large store (tests/genstore.py: BENCH_STORE messages in 20,000 threads
from 2,000 agents, with direct messages, tasks, replies, claims and locks)
is written once per hub schema and cached under tests/out/stores/; every
hub on it starts on a fresh copy whose sessions, claims and locks are made
live. On it: POST throughput beside an empty store's (same run, ratio);
history pages (a random channel and since_id) and tail pages at 16
connections; the p50 of each of history page, tail page, agents, open
tasks, bootstrap, thread list, and a post followed by the thread list
(which the post makes the hub build anew) requested alone on one connection (each
request waits up to 60 s; one that does not answer is reported in a note,
without a figure, and what would follow it on that hub is not run); the dashboard's first load (the requests dash/dash.html
makes on load, in its order, one after another: see dash_lines()); and
process start to the first answer.

Instructions per request (callgrind): each kind (POST, cached page, history
page, hub-info, long-poll wake) runs under `valgrind --tool=callgrind` on a
copy of the large store twice: 20 warm-up requests and N more, then again
with 2N. (total(2N) - total(N)) / N counts everything the hub does for one
request (parse, handler, commit, answer, loop turns) while start-up,
warm-up (prepared statements, the message cache), shutdown and the start
probes cancel out; toggle-collect on a handler would miss the commit and
the I/O. `bench wake` sends a hub-info before each wake, so the wake figure
has the hub-info figure subtracted. Without valgrind (installed with
apt-get when running as root) the rows say "skipped: no valgrind".

MCP tools/list chars (not timed): `CMD mcp`'s tools/list in each protocol
version, as characters of the compact JSON of its `tools` array, with and
without the outputSchemas: what the tool definitions cost a model's context
on every turn.

Hubs that answer on a timer (the reference re-queries long-polls every
250 ms, streams every 500 ms and scans the relay spool every 250 ms) are
given a random pause of up to one period before each timed request, so the
request lands at a random phase of that timer instead of always just after
it; the sample counts are scaled down for them so the whole run stays short.
"""

import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import genstore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "out", "bench.json")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def hub_command(text):
    """Split a hub command; make existing relative paths absolute (hubs run
    in their own directory) and run a leading `python3` as this very
    interpreter, so a version-manager shim is not part of what is timed."""
    args = shlex.split(text)
    out = []
    for i, a in enumerate(args):
        if i == 0 and os.path.basename(a) in ("python3", "python"):
            out.append(sys.executable)
        elif not a.startswith("-") and os.path.exists(a):
            out.append(os.path.abspath(a))
        else:
            out.append(a)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    """One hub process on a fresh directory (or a copy of a template)."""

    def __init__(self, cmd, template=None, store=None, wrap=(), start_s=30):
        """store: a generated storage file (genstore), copied and refreshed
        for this hub; wrap: a command the hub runs under (valgrind)."""
        self.cmd = cmd
        self.dir = tempfile.mkdtemp(prefix="arc-bench-", dir=os.environ.get("BENCH_TMP"))
        self.storage = os.path.join(self.dir, "arc.sqlite3")
        self.spool = os.path.join(self.dir, "spool")
        if template:
            for name in os.listdir(template):
                if name.startswith("arc.sqlite3"):
                    shutil.copy(os.path.join(template, name), self.dir)
        if store:
            genstore.copy_fresh(store, self.dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(self.dir, "hub.log"), "wb")
        self.proc = subprocess.Popen(
            list(wrap) + cmd + ["--host", "127.0.0.1", "--port", str(self.port), "--storage",
                   self.storage, "--spool-dir", self.spool, "--quiet"],
            cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + start_s
        while True:
            try:
                with urllib.request.urlopen(self.url + "/v1/hub-info", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hub did not start: {' '.join(cmd)}")
            time.sleep(0.1 if wrap else 0.02)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, keep=False):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def run_bench(args, timeout=300):
    bench = os.environ.get("BENCH", os.path.join(ROOT, "tests", "bench"))
    r = subprocess.run([bench] + [str(a) for a in args], capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"bench {' '.join(map(str, args))} failed "
                           f"(exit {r.returncode}): {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- the measurements -------------------------------------------------------
#
# Each measurement: a key, how to run it once for a hub (a function of the
# hub's settings returning the raw result), how many runs, and the table rows
# it feeds: (row label, unit, extractor(raw) -> number, target) where target
# is (text, predicate on arc's median) or None.

SLOW = "slow"     # hub kind: answers on timers (REF)
FAST = "fast"


def with_hub(cmd, fn, template=None, store=None):
    hub = Hub(cmd, template, store)
    try:
        return fn(hub)
    finally:
        hub.stop()


def m_load(mode, conns, close, secs, path=None):
    def run(ctx):
        extra = ["--close"] if close else []
        extra += ["--path", path] if path else []
        def go(hub):
            return run_bench([mode, "--url", hub.url, "--conns", conns, "--seconds", secs] + extra)
        return with_hub(ctx["cmd"], go, ctx.get("template") if mode == "get" else None)
    return run


def m_load_idle(conns, secs):
    """POST throughput while many other connections sit parked in a
    long-poll that nothing answers (arc: 9,000; REF: 1,000)."""
    def run(ctx):
        slow = ctx["kind"] == SLOW
        args = ["post", "--conns", conns, "--seconds", secs, "--idle", 1000 if slow else 9000,
                "--batch", 4 if slow else 256, "--settle-ms", 1000 if slow else 300]
        return with_hub(ctx["cmd"], lambda hub: run_bench(args + ["--url", hub.url]))
    return run


def m_wake(sse):
    def run(ctx):
        slow = ctx["kind"] == SLOW
        count = (15 if sse else 20) if slow else 200
        gap = (600 if sse else 300) if slow else 2
        args = ["wake", "--count", count, "--gap-ms", gap] + (["--sse"] if sse else [])
        return with_hub(ctx["cmd"], lambda hub: run_bench(args + ["--url", hub.url]))
    return run


def m_fanout(n):
    def run(ctx):
        slow = ctx["kind"] == SLOW
        return with_hub(ctx["cmd"], lambda hub: run_bench(
            ["fanout", "--url", hub.url, "--waiters", n, "--settle-ms", 1000 if slow else 300,
             "--batch", 4 if slow else 256]))
    return run


def m_relay(second):
    def run(ctx):
        slow = ctx["kind"] == SLOW
        if second:
            args = ["relay2", "--count", 3 if slow else 100, "--gap-ms", 1000 if slow else 2,
                    "--poll-timeout", 1 if slow else 30]
        else:
            args = ["relay", "--count", 15 if slow else 200, "--gap-ms", 300 if slow else 2]
        return with_hub(ctx["cmd"], lambda hub: run_bench(args + ["--spool", hub.spool]))
    return run


def m_park(ctx):
    steps = "1000" if ctx["kind"] == SLOW else "1000,10000"
    slow = ctx["kind"] == SLOW
    return with_hub(ctx["cmd"], lambda hub: run_bench(
        ["park", "--url", hub.url, "--pid", hub.pid, "--steps", steps, "--seconds", 5,
         "--settle-ms", 1000 if slow else 300, "--batch", 4 if slow else 256]))


def m_coldstart(ctx):
    d = tempfile.mkdtemp(prefix="arc-bench-cold-", dir=os.environ.get("BENCH_TMP"))
    try:
        return run_bench(["coldstart", "--runs", 5, "--dir", d, "--"] + ctx["cmd"] +
                         ["--host", "127.0.0.1", "--port", "{port}", "--storage",
                          "{dir}/arc.sqlite3", "--spool-dir", "{dir}/spool", "--quiet"])
    finally:
        shutil.rmtree(d, ignore_errors=True)


def coldstart_existing(ctx, **hub_args):
    """5 starts, each opening one existing storage file (written once
    beforehand by the same hub, or a copy of `store`)."""
    hub = Hub(ctx["cmd"], **hub_args)
    hub.stop(keep=True)
    try:
        return run_bench(["coldstart", "--runs", 5, "--dir", hub.dir, "--"] + ctx["cmd"] +
                         ["--host", "127.0.0.1", "--port", "{port}", "--storage",
                          hub.storage, "--spool-dir", "{dir}/spool", "--quiet"])
    finally:
        shutil.rmtree(hub.dir, ignore_errors=True)


def m_coldstart_existing(ctx):
    """The same, but every start opens one existing storage file, as `arc
    ensure` usually does."""
    return coldstart_existing(ctx)


def m_ensure(ctx):
    def go(hub):
        return run_bench(["exec", "--runs", 20, "--cwd", hub.dir, "--"] + ctx["cmd"] +
                         ["ensure", "--host", "127.0.0.1", "--port", hub.port,
                          "--storage", hub.storage, "--spool-dir", hub.spool])
    return with_hub(ctx["cmd"], go)


MCP_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")


def m_mcp_tools(ctx):
    """What the tool definitions cost a model: `CMD mcp`'s tools/list in each
    protocol version, as characters of the compact JSON of the `tools` array
    (the reference sends it with spaces; re-serialized, both count alike),
    with and without the outputSchemas. Not timed. The requests go in
    Content-Length frames, which both servers read; the answers come as lines
    (arc) or frames (the reference)."""
    def frame(obj):
        body = json.dumps(obj).encode()
        return b"Content-Length: %d\r\n\r\n" % len(body) + body

    def go(hub):
        out = {}
        for v in MCP_VERSIONS:
            if v == "2026-07-28":   # stateless: no handshake, _meta on the request
                msgs = [{"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": {
                    "io.modelcontextprotocol/protocolVersion": v,
                    "io.modelcontextprotocol/clientCapabilities": {}}}}]
            else:
                msgs = [{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                            "protocolVersion": v, "capabilities": {},
                            "clientInfo": {"name": "bench", "version": "1"}}},
                        {"jsonrpc": "2.0", "method": "notifications/initialized"},
                        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]
            r = subprocess.run(ctx["cmd"] + ["mcp", "--agent", "bench-mcp", "--base-url", hub.url],
                               input=b"".join(frame(m) for m in msgs), capture_output=True,
                               timeout=60, cwd=hub.dir)
            text = r.stdout.decode()
            dec, i, tools = json.JSONDecoder(), 0, None
            while i < len(text):
                j = text.find("{", i)
                if j < 0:
                    break
                msg, i = dec.raw_decode(text, j)
                if msg.get("id") == 2:
                    tools = msg["result"]["tools"]
            if tools is None:
                raise RuntimeError(f"no tools/list answer in {v}: {r.stderr.decode()[-300:]}")

            def size(ts):
                return len(json.dumps(ts, separators=(",", ":"), ensure_ascii=False))
            out[v] = dict(tools=len(tools), chars=size(tools),
                          no_output=size([{k: x for k, x in t.items() if k != "outputSchema"}
                                          for t in tools]))
        return out
    return with_hub(ctx["cmd"], go)


def mcp_rows():
    rows = []
    for v in MCP_VERSIONS:
        rows.append((f"MCP tools/list chars, {v}", "chars", lambda r, v=v: r[v]["chars"], None))
        if v >= "2025-06-18":
            rows.append(("  without outputSchema", "chars",
                         lambda r, v=v: r[v]["no_output"], None))
    return rows


def m_hook(ctx):
    """`arc hook claude UserPromptSubmit` against a running hub, nothing
    owed: what every prompt and tool call of a hooked agent costs."""
    def go(hub):
        return run_bench(["exec", "--runs", 50, "--cwd", hub.dir, "--"] + ctx["cmd"] +
                         ["hook", "claude", "UserPromptSubmit", "--agent", "bench-hook",
                          "--base-url", "http://127.0.0.1:%s" % hub.port])
    return with_hub(ctx["cmd"], go)


def step(raw, conns, key):
    for s in raw["steps"]:
        if s["conns"] == conns:
            return s[key]
    return None


def lat_rows(what, tgt50=None, tgt99=None, p90=False):
    rows = [(f"{what} p50", "ms", lambda r: r["p50_ms"], tgt50)]
    if p90:
        rows.append((f"{what} p90", "ms", lambda r: r["p90_ms"], None))
    rows.append((f"{what} p99", "ms", lambda r: r["p99_ms"], tgt99))
    return rows


def lt(x):
    return (f"< {x:g}", lambda v: v < x)


def ge(x):
    return (f">= {x:,}", lambda v: v >= x)


SECS = 2
HIST10K = "/v1/messages?channel=general&since_id={r:9900}&limit=100"
MEASUREMENTS = []
for close in (False, True):
    for conns in (1, 16, 64):
        name = f"post_{'close' if close else 'ka'}_{conns}"
        what = f"POST {'close' if close else 'keep-alive'} {conns} conn{'s' if conns > 1 else ''}"
        rows = [(what, "req/s", lambda r: r["rps"],
                 ge(30000) if (not close and conns == 16) else None)]
        rows += lat_rows(f"  latency", lt(0.5) if (not close and conns == 1) else None)
        MEASUREMENTS.append(dict(key=name, runs=3, run=m_load("post", conns, close, SECS),
                                 rows=rows))
MEASUREMENTS += [
    dict(key="post_ka_16_idle", runs=3, ref_runs=2, run=m_load_idle(16, SECS),
         ref_note="REF: 1,000 idle long-polls instead of 9,000",
         rows=[("POST keep-alive 16 conns + idle long-polls", "req/s", lambda r: r["rps"], None)]
         + lat_rows("  latency")),
    dict(key="get_16", runs=3, run=m_load("get", 16, False, SECS), template=True,
         rows=[("GET 100-msg page, 16 conns", "req/s", lambda r: r["rps"], ge(20000))]
         + lat_rows("  latency")),
    dict(key="wake_longpoll", runs=3, run=m_wake(False),
         rows=lat_rows("wake post->long-poll", lt(0.5), lt(2), p90=True)),
    dict(key="wake_sse", runs=3, run=m_wake(True),
         rows=lat_rows("wake post->SSE event", lt(0.5), lt(2), p90=True)),
    dict(key="fanout_100", runs=3, run=m_fanout(100),
         rows=[("fan-out 100 waiters, all answered", "ms", lambda r: r["all_ms"], None)]),
    dict(key="fanout_1000", runs=3, run=m_fanout(1000),
         rows=[("fan-out 1,000 waiters", "ms", lambda r: r["all_ms"], None)]),
    dict(key="fanout_10000", runs=3, run=m_fanout(10000), ref_skip="REF capped at 1,000 connections",
         rows=[("fan-out 10,000 waiters", "ms", lambda r: r["all_ms"], lt(100))]),
    dict(key="relay", runs=3, run=m_relay(False),
         rows=lat_rows("relay round trip", lt(5))),
    dict(key="relay_2nd", runs=3, ref_runs=2, run=m_relay(True),
         rows=lat_rows("relay, 2nd agent while 1st long-polls")),
    dict(key="park", runs=3, ref_runs=2, run=m_park,
         rows=[("RSS idle", "MiB", lambda r: r["rss_idle_kb"] / 1024, lt(4)),
               ("RSS 1,000 parked", "MiB", lambda r: step(r, 1000, "rss_kb") / 1024, None),
               ("  CPU over 5 s, 1,000 parked", "ms", lambda r: step(r, 1000, "cpu_ms"), None),
               ("RSS 10,000 parked", "MiB",
                lambda r: (step(r, 10000, "rss_kb") or 0) / 1024 or None, lt(64)),
               ("  CPU over 5 s, 10,000 parked", "ms",
                lambda r: step(r, 10000, "cpu_ms"), ("= 0", lambda v: v == 0))]),
    dict(key="coldstart", runs=3, run=m_coldstart,
         rows=[("cold start, new storage (median of 5)", "ms", lambda r: r["p50_ms"], lt(10))]),
    dict(key="coldstart_existing", runs=3, run=m_coldstart_existing,
         rows=[("cold start, existing storage (median of 5)", "ms", lambda r: r["p50_ms"], lt(10))]),
    dict(key="ensure", runs=3, run=m_ensure,
         rows=[("`ensure` on a running hub (median of 20)", "ms", lambda r: r["p50_ms"], lt(20))]),
    dict(key="mcp_tools", runs=1, run=m_mcp_tools, rows=mcp_rows()),
    dict(key="hook", runs=3, run=m_hook, ref_skip="arc hook is arc's own command",
         rows=[("`arc hook claude UserPromptSubmit` (median of 50)", "ms",
                lambda r: r["p50_ms"], lt(10))]),
]


def m_search(n):
    """tests/bench_search.py on a store of n messages written by another
    process: the first search, the whole backlog indexed, warm queries."""
    def run(ctx):
        p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "bench_search.py"),
                            "--messages", str(n), "--arc", shlex.join(ctx["cmd"])],
                           capture_output=True, text=True, timeout=1800)
        if p.returncode:
            raise RuntimeError("bench_search.py: " + p.stderr[-2000:])
        return json.loads(p.stdout)
    return run


MEASUREMENTS += [
    dict(key="search_100k", runs=1, run=m_search(100000), ref_skip="search is an arc extension",
         rows=[("search: first answer, 100k unindexed", "ms", lambda r: r["first_search_ms"], None),
               ("  index 100k written by another process", "s", lambda r: r["index_all_s"], None),
               ("  rare word", "ms", lambda r: r["rare"]["p50_ms"], None),
               ("  common word (in most messages)", "ms", lambda r: r["common"]["p50_ms"], None),
               ("  two words", "ms", lambda r: r["two_words"]["p50_ms"], None),
               ("  prefix", "ms", lambda r: r["prefix"]["p50_ms"], None),
               ("  index size", "MB", lambda r: r["size_after_mb"] - r["size_before_mb"], None)]),
]

# ---- a large store --------------------------------------------------------
#
# BENCH_STORE messages (default 1,000,000; 0 skips this part) in 20,000
# threads from 2,000 agents (fewer below 200,000 messages: N/10, N/100), written by tests/genstore.py (cached under
# tests/out/stores/); every hub below starts on a fresh copy of it.

STORE_N = int(os.environ.get("BENCH_STORE", "1000000").replace("_", "").replace(",", ""))
STORE_T = min(20000, max(1, STORE_N // 10))
STORE_A = min(2000, max(10, STORE_N // 100))
STORE_C = genstore.channel_count(STORE_T)       # channels ch-0 .. ch-(C-1)
HISTORY_PATH = f"/v1/messages?channel=ch-{{r:{STORE_C}}}&since_id={{r:{STORE_N}}}&limit=100"
TAIL_PATH = f"/v1/messages?channel=ch-{{r:{STORE_C}}}&tail=1&limit=100"
DASH_PAGE = 500     # dash/dash.html's PAGE


def run_seq(url, lines, runs, secs, timeout_ms=120000):
    """`tests/bench seq` over the given request lines."""
    fd, path = tempfile.mkstemp(prefix="arc-bench-seq-", suffix=".txt",
                                dir=os.environ.get("BENCH_TMP"))
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return run_bench(["seq", "--url", url, "--file", path, "--runs", runs,
                          "--seconds", secs, "--timeout-ms", timeout_ms],
                         timeout=timeout_ms / 1000 * (len(lines) + 1) + secs + 60)
    finally:
        os.unlink(path)


def get_json(url, path):
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return json.loads(r.read())


def dash_lines(url, nick="operator"):
    """The requests dash/dash.html's init() makes on a first load, in its
    order (hub-info, register, bootstrap only when hub-info has no
    latest_message_id, channels, the view's tail page, the inbox, then
    refreshAll(): agents, work (tasks, claims, locks, then up to 40 open
    tasks' messages), channels, threads, shutdown). The page's EventSource
    is left out (a stream is not a request that ends). The browser overlaps
    some of these; here they run one after another, so the sum is an upper
    bound of what the page waits for."""
    info = get_json(url, "/v1/hub-info")["result"]
    lines = ["GET /", "GET /v1/hub-info",
             "POST /v1/sessions " + json.dumps(
                 {"agent_id": nick, "display_name": nick, "capabilities": ["operator", "human"],
                  "metadata": {"client": "arc-dashboard"}, "replace": True})]
    if not isinstance(info.get("latest_message_id"), int):
        lines.append(f"GET /v1/bootstrap?agent_id={nick}")
    lines += ["GET /v1/channels", f"GET /v1/messages?channel=general&tail=1&limit={DASH_PAGE}",
              f"GET /v1/inbox/{nick}?tail=1&limit=100", f"GET /v1/agents?as={nick}",
              "GET /v1/tasks?status=open", "GET /v1/claims?active_only=1",
              "GET /v1/locks?active_only=1"]
    chans = {c["name"] for c in get_json(url, "/v1/channels")["result"]}
    tasks = get_json(url, "/v1/tasks?status=open")["result"][::-1]
    for t in [t for t in tasks if t["channel"] in chans][:40]:
        lines.append(f"GET /v1/messages?channel={urllib.parse.quote(t['channel'])}"
                     f"&since_id={t['task_id'] - 1}&limit=1")
    lines += ["GET /v1/channels", "GET /v1/threads", "GET /v1/shutdown"]
    return lines


# (name, request line, runs, seconds). Threads and the dashboard run last:
# on a slow hub they may outlast the sessions' presence TTL.
BIG_SEQS = [
    ("history", f"GET {HISTORY_PATH}", 300, 3),
    ("tail", f"GET {TAIL_PATH}", 300, 3),
    ("agents", "GET /v1/agents", 50, 3),
    ("tasks", "GET /v1/tasks?status=open", 50, 3),
    ("bootstrap", "GET /v1/bootstrap?agent_id=agent-1", 50, 3),
    ("threads", "GET /v1/threads", 10, 5),
    # The hub keeps the last thread list until something it shows changes:
    # a post first, so that each list is built anew.
    ("threads_post", ["POST /v1/messages " + json.dumps(
        {"from_agent": "agent-1", "channel": "general", "thread_id": "bench-thread",
         "body": "rebuild"}), "GET /v1/threads"], 10, 5),
]


SEQ_TIMEOUT_MS = 60000


def m_big_lat(ctx):
    """One hub on the large store; each request of BIG_SEQS alone on one
    connection, again and again, then the dashboard's first load. Once a
    request times out the hub is still busy with it: what would follow is
    not run (and reported so)."""
    def go(hub):
        out, busy = {}, None
        for name, line, runs, secs in BIG_SEQS + [("dash", None, 10, 10)]:
            if busy:
                out[name] = {"skipped": f"not run: {busy} timed out"}
                continue
            if ctx["kind"] == SLOW:
                runs = min(runs, 10)
            lines = dash_lines(hub.url) if name == "dash" else \
                line if isinstance(line, list) else [line]
            out[name] = run_seq(hub.url, lines, runs, secs, SEQ_TIMEOUT_MS)
            if out[name].get("timed_out"):
                busy = name
        return out
    return with_hub(ctx["cmd"], go, store=ctx["store"])


def m_big_load(path):
    def run(ctx):
        return with_hub(ctx["cmd"], lambda hub: run_bench(
            ["get", "--url", hub.url, "--conns", 16, "--seconds", SECS, "--path", path]),
            store=ctx["store"])
    return run


def m_big_post(ctx):
    """POST at 16 connections on the large store and on an empty one, one
    after the other in the same run; the ratio is large/empty."""
    args = ["post", "--conns", 16, "--seconds", SECS]
    empty = with_hub(ctx["cmd"], lambda hub: run_bench(args + ["--url", hub.url]))
    big = with_hub(ctx["cmd"], lambda hub: run_bench(args + ["--url", hub.url]),
                   store=ctx["store"])
    return dict(empty=empty, big=big, rps=big["rps"], errors=big["errors"] + empty["errors"],
                ratio=big["rps"] / empty["rps"] if empty["rps"] else None)


def m_big_start(ctx):
    """Process start to the first answer, on (a copy of) the large store;
    5 starts on the same file."""
    return coldstart_existing(ctx, store=ctx["store"])


def seq_ms(name, key="p50_ms"):
    """Extractor: a BIG_SEQS figure; None when it timed out or never ran."""
    def fn(r):
        x = r[name]
        return None if x.get("timed_out") or not x.get("samples") else x[key]
    return fn


# ---- instruction counts (callgrind) ----------------------------------------
#
# Each kind of request runs under `valgrind --tool=callgrind` twice, on a
# fresh copy of the large store: W warm-up requests then N measured ones,
# and again with 2N. The difference of the two runs' totals over N is the
# cost of one request: start-up, the warm-up (statements prepared, cache
# filled), the start probes and shutdown are the same in both runs and
# cancel out, and every instruction the hub spends on the request is
# counted (parsing, handler, commit, writing the answer, the loop's turns),
# not only a handler's (toggle-collect on one function would miss the
# commit and the I/O around it).

CG_N = 200
CG_WARM = 20
CG_KINDS = [
    # key, label, bench args (N is appended as --count)
    ("post", "POST", ["post", "--conns", 1]),
    ("cached", "cached page",
     ["get", "--conns", 1, "--path", "/v1/messages?channel=general&limit=100"]),
    ("history", "history page",
     ["get", "--conns", 1, "--path", HISTORY_PATH]),
    ("info", "GET /v1/hub-info", ["get", "--conns", 1, "--path", "/v1/hub-info"]),
    ("wake", "long-poll wake", ["wake", "--gap-ms", 0]),
]


def ensure_valgrind():
    """valgrind on PATH, installing it with apt-get when root can; the
    reason otherwise."""
    if shutil.which("valgrind"):
        return None
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return "no valgrind (and no apt-get as root to install it)"
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(os.path.join(os.path.dirname(OUT), "bench-apt.log"), "ab") as logf:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "install", "-y", "--no-install-recommends", "valgrind"],
                    ["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", "valgrind"]):
            r = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
            if cmd[1] == "install" and r.returncode == 0:
                break
    return None if shutil.which("valgrind") else "no valgrind (apt-get failed)"


def callgrind_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def callgrind_once(ctx, args, count):
    d = tempfile.mkdtemp(prefix="arc-bench-cg-", dir=os.environ.get("BENCH_TMP"))
    out = os.path.join(d, "callgrind.out")
    try:
        hub = Hub(ctx["cmd"], store=ctx["store"], start_s=180,
                  wrap=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
        try:
            for n in (CG_WARM, count):
                run_bench(args + ["--url", hub.url, "--count", n], timeout=900)
        finally:
            hub.stop()
        return callgrind_total(out)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def m_callgrind(ctx):
    why = ensure_valgrind()
    if why:
        return {"skipped": why}
    out = {}
    for key, _, args in CG_KINDS:
        n = CG_N // 2 if key == "wake" else CG_N
        a = callgrind_once(ctx, args, n)
        b = callgrind_once(ctx, args, 2 * n)
        out[key] = (b - a) / n
    if "wake" in out and "info" in out:   # bench wake probes with a hub-info each time
        out["wake"] -= out["info"]
    return out


def cg(key):
    return lambda r: None if r.get("skipped") else r[key]


if STORE_N > 0:
    MEASUREMENTS += [
        dict(key="get_history_16", runs=3, run=m_load("get", 16, False, SECS, HIST10K),
             template=True,
             rows=[("GET history page (of 10,000), 16 conns", "req/s",
                    lambda r: r["rps"], None)] + lat_rows("  latency")),
        dict(key="big_post_16", runs=3, ref_runs=1, run=m_big_post, store=True,
             rows=[("POST keep-alive 16 conns, big store", "req/s", lambda r: r["rps"], None),
                   ("  big store / empty store", "ratio", lambda r: r["ratio"], ge(0.9))]),
        dict(key="big_history_16", runs=3, ref_runs=1, run=m_big_load(HISTORY_PATH), store=True,
             rows=[("GET history page, big store, 16 conns", "req/s", lambda r: r["rps"], None)]
             + lat_rows("  latency")),
        dict(key="big_tail_16", runs=3, ref_runs=1, run=m_big_load(TAIL_PATH), store=True,
             rows=[("GET tail page, big store, 16 conns", "req/s",
                    lambda r: r["rps"], None)] + lat_rows("  latency")),
        dict(key="big_lat", runs=2, ref_runs=1, run=m_big_lat, store=True,
             rows=[("big store: history page p50", "ms", seq_ms("history"), lt(20)),
                   ("big store: tail page p50", "ms", seq_ms("tail"), lt(20)),
                   ("big store: GET /v1/agents p50", "ms", seq_ms("agents"), lt(20)),
                   ("big store: GET /v1/tasks?status=open p50", "ms", seq_ms("tasks"), lt(20)),
                   ("big store: GET /v1/bootstrap p50", "ms", seq_ms("bootstrap"), lt(20)),
                   ("big store: GET /v1/threads p50", "ms", seq_ms("threads"), lt(20)),
                   ("big store: POST + GET /v1/threads (list rebuilt) p50", "ms",
                    seq_ms("threads_post"), None),
                   ("big store: dashboard first load p50", "ms", seq_ms("dash"), lt(20))]),
        dict(key="big_start", runs=3, ref_runs=1, run=m_big_start, store=True,
             rows=[("big store: hub start (median of 5)", "ms",
                    lambda r: r["p50_ms"], lt(50))]),
        dict(key="callgrind", runs=1, run=m_callgrind, store=True,
             ref_skip="instruction counts are for arc only",
             rows=[(f"instr/request: {label}", "instr", cg(key),
                    lt(250000) if key == "history" else lt(150000) if key == "cached" else None)
                   for key, label, _ in CG_KINDS]
             + [("instr/request: arc hook: not implemented", "instr",
                 lambda r: None, None)]),
    ]


def errors_of(raw):
    if "history" in raw and isinstance(raw["history"], dict):    # big_lat
        return sum(v.get("errors", 0) for v in raw.values())
    if "steps" in raw and raw.get("mode") != "seq":
        return sum(s.get("failed", 0) for s in raw["steps"])
    return raw.get("errors", 0)


def make_template(cmd):
    """A storage file holding 10,000 messages in `general`, written by the
    hub under test; every GET run starts a fresh hub on a copy of it."""
    hub = Hub(cmd)
    try:
        r = run_bench(["post", "--url", hub.url, "--conns", 16, "--count", 10000])
        if r["ok"] < 10000:
            raise RuntimeError(f"pre-posting 10,000 messages: only {r['ok']} succeeded")
    finally:
        hub.stop(keep=True)
    return hub.dir


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def summary(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def main():
    argv = sys.argv[1:]
    only = None
    if "--list" in argv:
        for m in MEASUREMENTS:
            print(m["key"])
        return 0
    if "--only" in argv:
        only = set(argv[argv.index("--only") + 1].split(","))
    t_start = time.monotonic()
    hubs = [dict(name="arc", cmd=hub_command(os.environ.get("ARC", "./arc")), kind=FAST)]
    if os.environ.get("REF", "").strip():
        hubs.append(dict(name="REF", cmd=hub_command(os.environ["REF"]), kind=SLOW))
    results = {h["name"]: {} for h in hubs}
    notes = []
    for h in hubs:
        log(f"== {h['name']}: {' '.join(h['cmd'])}")
        tmpl = store = None
        for m in MEASUREMENTS:
            if only and m["key"] not in only:
                continue
            if h["kind"] == SLOW and m.get("ref_skip"):
                results[h["name"]][m["key"]] = {"skipped": m["ref_skip"]}
                notes.append(f"{m['key']}: {h['name']} skipped ({m['ref_skip']}).")
                continue
            if m.get("template") and not tmpl:
                t0 = time.monotonic()
                tmpl = make_template(h["cmd"])
                log(f"   template: 10,000 messages posted in {time.monotonic() - t0:.1f} s")
            if m.get("store") and not store:
                store = genstore.store(h["cmd"], STORE_N, STORE_T, STORE_A, log=log)
                log(f"   store: {os.path.relpath(store, os.getcwd())}")
            runs = m.get("ref_runs", m["runs"]) if h["kind"] == SLOW else m["runs"]
            if h["kind"] == SLOW and m.get("ref_note"):
                notes.append(f"{m['key']}: {m['ref_note']}; arc/REF compares unlike loads.")
            ctx = dict(cmd=h["cmd"], kind=h["kind"], template=tmpl, store=store)
            raws = []
            t0 = time.monotonic()
            for _ in range(runs):
                try:
                    raws.append(m["run"](ctx))
                except Exception as e:   # keep going: one failed run is a result too
                    raws.append({"bench_error": str(e)})
                    log(f"   {m['key']}: run failed: {e}")
            results[h["name"]][m["key"]] = {"runs": raws}
            log(f"   {m['key']:<14} {runs} runs in {time.monotonic() - t0:5.1f} s")
        if tmpl:
            shutil.rmtree(tmpl, ignore_errors=True)

    # ---- the table ----
    has_ref = len(hubs) > 1
    rows = []
    for m in MEASUREMENTS:
        if only and m["key"] not in only:
            continue
        for i, (label, unit, fn, target) in enumerate(m["rows"]):
            row = dict(measurement=m["key"], label=label, unit=unit)
            for h in hubs:
                entry = results[h["name"]][m["key"]]
                vals, errs = [], 0
                for raw in entry.get("runs", []):
                    if "bench_error" in raw:
                        errs += 1
                        continue
                    try:
                        vals.append(fn(raw))
                    except (KeyError, TypeError, ZeroDivisionError):
                        vals.append(None)
                    errs += errors_of(raw)
                med, lo, hi = summary(vals)
                row[h["name"]] = dict(median=med, min=lo, max=hi, values=vals,
                                      errors=errs if i == 0 else None,
                                      skipped=entry.get("skipped"))
            if target:
                med = row["arc"]["median"]
                row["target"] = target[0]
                row["met"] = None if med is None else bool(target[1](med))
            rows.append(row)

    head = f"{'measurement':<42} {'unit':<5} {'arc':>8} {'(min-max)':<17} {'err':>4}"
    if has_ref:
        head += f" {'REF':>8} {'(min-max)':<17} {'err':>4} {'arc/REF':>8}"
    head += "  target"
    print()
    print(head)
    print("-" * len(head))
    for row in rows:
        a = row["arc"]
        line = (f"{row['label']:<42} {row['unit']:<5} {fmt(a['median']):>8} "
                f"{fmt(a['min']) + '-' + fmt(a['max']) if a['median'] is not None else '':<17} "
                f"{'' if a['errors'] is None else a['errors']:>4}")
        if has_ref:
            r = row["REF"]
            if r.get("skipped"):
                line += f" {'skipped':>8} {'':<17} {'':>4} {'':>8}"
            else:
                ratio = (a["median"] / r["median"]) if (a["median"] is not None and r["median"]) else None
                line += (f" {fmt(r['median']):>8} "
                         f"{fmt(r['min']) + '-' + fmt(r['max']) if r['median'] is not None else '':<17} "
                         f"{'' if r['errors'] is None else r['errors']:>4} {fmt(ratio):>8}")
        if "target" in row:
            line += f"  {row['target']} {'ok' if row['met'] else 'MISSED' if row['met'] is False else '?'}"
        print(line)

    # ---- notes derived from the raw figures ----
    for h in hubs:
        for key in ("fanout_10000", "park"):
            for raw in results[h["name"]].get(key, {}).get("runs", []):
                steps = raw.get("steps", [raw]) if "bench_error" not in raw else []
                for s in steps:
                    if s.get("refused"):
                        notes.append(f"{key}: {h['name']} refused {s['refused']} of "
                                     f"{s.get('waiters', s.get('conns'))} waiters with 503 "
                                     f"(connection limit; the bench also holds one control "
                                     f"connection), so {s['parked']} were parked.")
                        break
                else:
                    continue
                break
    for h in hubs:
        for raw in results[h["name"]].get("big_lat", {}).get("runs", []):
            for name, x in raw.items():
                if isinstance(x, dict) and x.get("timed_out"):
                    notes.append(f"big_lat: {h['name']}'s {name} did not answer within "
                                 f"{x['timeout_ms'] / 1000:g} s (no figure).")
                elif isinstance(x, dict) and x.get("skipped"):
                    notes.append(f"big_lat: {h['name']}'s {name}: {x['skipped']}.")
        for raw in results[h["name"]].get("callgrind", {}).get("runs", []):
            if raw.get("skipped"):
                notes.append(f"callgrind: skipped: {raw['skipped']}.")
    if STORE_N > 0:
        notes.append(f"large store: {STORE_N:,} messages, {STORE_T:,} threads, "
                     f"{STORE_A:,} agents (BENCH_STORE; tests/genstore.py).")
    if has_ref:
        notes.append("REF runs fewer samples for timer-driven paths and pauses a random "
                     "0..period before each timed request (long-poll 300 ms, SSE 600 ms, "
                     "relay 300 ms; relay 2nd agent: REF's 1st agent long-polls 1 s, arc's 30 s).")
    elapsed = time.monotonic() - t_start
    for n in dict.fromkeys(notes):
        print("note: " + n)
    print(f"\nbench: {elapsed:.0f} s; raw figures in {os.path.relpath(OUT, os.getcwd())}")

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(dict(when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       elapsed_s=round(elapsed, 1),
                       host=dict(cpus=os.cpu_count(), platform=sys.platform),
                       hubs={h["name"]: h["cmd"] for h in hubs},
                       results=results, table=rows, notes=list(dict.fromkeys(notes))),
                  f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
