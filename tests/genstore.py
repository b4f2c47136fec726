"""Write a large arc storage file directly (for `make bench`); stdlib only.

usage: python3 tests/genstore.py --arc ./arc --out FILE
           [--messages N] [--threads T] [--agents A] [--seed S]

The schema is not copied from anywhere: the hub under test creates it (it
is started once on an empty file and stopped), so the file carries exactly
the tables, indexes and default channels that hub makes, extensions
included. This script then fills the reference's tables (PROTOCOL §10)
with rows shaped as the hub writes them (compact JSON columns, ISO-8601
UTC timestamps with microseconds, AUTOINCREMENT sequence) and leaves the
file in WAL mode, so the hub (or the Python reference) opens it as one it
wrote itself.

What a store of N messages, T threads and A agents holds (fixed seed, so
one set of parameters always gives the same file):
  - channels: `general`, `direct` and C = clamp(T / 400, 4, 50) more;
  - A agents, each with one live session (last_seen is set to "now" by
    refresh(), run on every copy a bench uses) and A / 2 ended ones;
  - messages over 30 days: the T threads start evenly through history and
    each takes replies while about 30 newer threads start (so thread
    lengths are skewed, most of them 20-60 messages); 8% are direct
    messages (channel `direct`, to_agent set), 12% channel messages
    outside threads, the rest thread traffic. A thread's first message is
    a task_request (50%), a task (20%) or a chat; replies are chat,
    notice, artifact, claim/release announcements, subtasks (kind task
    with parent_task_id) and task_results, which complete the thread's
    task_request exactly as POST /v1/messages does (metadata
    task_completed, task row done). Half of the replies name the previous
    message of the thread in reply_to; some carry metadata or attachments;
  - a task row per task/task_request message; tasks of threads that have
    gone quiet are mostly done, recent ones open;
  - claims on tasks (released when the task completed), locks on 2 A file
    paths (a fifth name a thread in metadata.thread_id); the unreleased
    ones are made active by refresh().

As a module: store(arc_cmd, messages, threads, agents) returns the path of
a cached file (tests/out/stores/, keyed by the parameters, this
generator's version and the hub's schema), generating it when missing;
copy_fresh(path, dir) copies it for one run and refreshes its clock-bound
rows. Runs write to their copy, never to the cached file.
"""

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "tests", "out", "stores")
VERSION = 1          # bump when the generated content changes
HISTORY_S = 30 * 86400

WORDS = ("the a to of and in for on with build test fix parser hub relay "
         "message thread task claim lock review merge branch commit store "
         "cache page index query schema session agent channel retry "
         "timeout error warning done ok failing passing flaky benchmark "
         "latency throughput sqlite wal fsync epoll socket buffer json "
         "render reply notice artifact worker planner reviewer").split()


def iso(t):
    """Unix seconds -> the hub's timestamp text, 2026-01-02T03:04:05.123456Z."""
    us = int(round(t * 1e6))
    s, frac = divmod(us, 1000000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{frac:06d}Z"


def dumps(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_schema(arc_cmd, path, until=None):
    """Start the hub once on a new file at `path` and stop it once it
    answers (and `until()` is true): the file then holds the hub's own
    schema and default channels."""
    d = os.path.dirname(os.path.abspath(path))
    port = free_port()
    arc_cmd = [os.path.abspath(a) if i == 0 and os.path.exists(a) else a
               for i, a in enumerate(arc_cmd)]
    proc = subprocess.Popen(
        arc_cmd + ["--host", "127.0.0.1", "--port", str(port), "--storage", path,
                         "--spool-dir", os.path.join(d, "spool-genstore"), "--quiet"],
        cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + (30 if until is None else 600)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/hub-info",
                                            timeout=2) as r:
                    if r.status == 200 and (until is None or until()):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hub did not start or settle: {' '.join(arc_cmd)}")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(os.path.join(d, "spool-genstore"), ignore_errors=True)


def schema_of(path):
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        db.close()
    return "\n".join(f"{t} {n} {s}" for t, n, s in rows)


def channel_count(threads):
    return max(4, min(50, threads // 400))


def fill(path, messages, threads, agents, seed=1, now=None):
    """Fill the reference's tables of the (schema-only) file at `path`."""
    rng = random.Random(seed)
    rnd = rng.random
    now = time.time() if now is None else now
    t0 = now - HISTORY_S
    step = HISTORY_S / max(messages, 1)

    agent_ids = [f"agent-{k}" for k in range(agents)]
    chans = [f"ch-{k}" for k in range(channel_count(threads))]
    bodies = []
    for _ in range(2048):
        n = int(rng.expovariate(1 / 24)) + 3
        bodies.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
    meta_pool = [dumps({"files": [f"src/mod{rng.randrange(40)}/f{rng.randrange(30)}.c"]}),
                 dumps({"status": "in_progress", "progress": 0.5}),
                 dumps({"client": "arc-mcp", "model": "m-1", "tokens": 1234}),
                 dumps({"priority": 2, "labels": ["perf", "store"]})]
    att_pool = [dumps([{"type": "file_ref", "path": f"src/mod{k}/f{k * 7 % 30}.c",
                        "start_line": 10 + k, "end_line": 40 + k}]) for k in range(20)]
    att_pool += [dumps([{"type": "code", "content": "int x = 1;\nreturn x;\n",
                         "language": "c"}]),
                 dumps([{"type": "diff_ref", "path": "arc.c", "base": "main",
                         "head": "work"}])]

    # Per thread: channel, root message id, root kind, its task's state.
    th_chan = [0] * threads
    th_root = [0] * threads
    th_kind = [""] * threads
    th_last = [0] * threads
    th_open = [False] * threads   # the root's task (task_request or task) is open

    msgs = []        # rows of messages
    tasks = {}       # task_id -> [parent, channel, thread_id, status, created, completed]
    claims = []
    started = 0
    n_thread_msgs = messages * 0.8
    next_root = 0.0
    for i in range(messages):
        mid = i + 1
        ts = iso(t0 + i * step + rnd() * step * 0.5)
        frm = agent_ids[int(agents * rnd() ** 1.5)]
        to = None
        reply = None
        thread = None
        meta = "{}"
        att = "[]"
        kind = "chat"
        parent = None
        new_thread = started < threads and i >= next_root
        r = rnd()
        if new_thread:
            k = started
            started += 1
            next_root = started * messages / threads
            ch = chans[k % len(chans)] if rnd() < 0.85 else "general"
            th_chan[k] = ch
            th_root[k] = mid
            thread = f"thread-{k}"
            x = rnd()
            kind = "task_request" if x < 0.5 else "task" if x < 0.7 else "chat"
            th_kind[k] = kind
            th_last[k] = mid
            if kind != "chat":
                th_open[k] = True
                tasks[mid] = [None, ch, thread, "open", ts, None]
                if rnd() < 0.7:
                    claims.append([f"task:{mid}", thread, mid, frm, ts, mid])
            ch_name = ch
        elif r < 0.08:
            to = agent_ids[rng.randrange(agents)]
            ch_name = "direct"
        elif r < 0.20 or started == 0:
            ch_name = "general" if rnd() < 0.3 else chans[rng.randrange(len(chans))]
            kind = "notice" if rnd() < 0.2 else "chat"
        else:
            back = int(rng.expovariate(1 / 30))
            k = max(0, started - 1 - back)
            ch_name = th_chan[k]
            thread = f"thread-{k}"
            root = th_root[k]
            x = rnd()
            if x < 0.60:
                kind = "chat"
            elif x < 0.75:
                kind = "notice"
            elif x < 0.80:
                kind = "artifact"
            elif x < 0.84:
                kind = "claim"
            elif x < 0.88:
                kind = "release"
            elif x < 0.93:
                kind = "task"
                if th_kind[k] != "chat":
                    parent = root
            else:
                kind = "task_result"
            if kind == "task_result" and th_kind[k] == "task_request" and th_open[k]:
                reply = root
                th_open[k] = False
                tasks[root][3] = "done"
                tasks[root][5] = ts
                meta = dumps({"task_completed": root})
            elif rnd() < 0.5:
                reply = th_last[k]
            if kind == "task":
                tasks[mid] = [parent, ch_name, thread, "open", ts, None]
            th_last[k] = mid
        if meta == "{}" and rnd() < 0.15:
            meta = meta_pool[rng.randrange(len(meta_pool))]
        if rnd() < 0.04:
            att = att_pool[rng.randrange(len(att_pool))]
        msgs.append((mid, ts, frm, to, ch_name, kind, bodies[rng.randrange(len(bodies))],
                     att, reply, thread, meta))

    # Tasks whose thread went quiet long ago are mostly done (completed
    # through POST /v1/tasks/{id}/complete: no message of their own).
    quiet = messages * 0.95
    for tid, t in tasks.items():
        if t[3] == "open" and tid < quiet and rnd() < 0.97:
            t[3] = "done"
            t[5] = iso(t0 + min(tid + 50, messages) * step)
    claim_rows = []
    for key, thread, tid, owner, ts, _ in claims:
        t = tasks[tid]
        if t[3] == "done":
            released = t[5]
        elif tid < messages * 0.98:
            released = iso(t0 + min(tid + 20, messages) * step)   # gave up
        else:
            released = None
        exp = iso(t0 + tid * step + 300)
        claim_rows.append((key, thread, tid, owner, ts, exp, released, "{}"))
    lock_rows = []
    for k in range(2 * agents):
        path_ = f"src/mod{k % 97}/file{k}.c"
        at = t0 + rnd() * HISTORY_S
        active = rnd() < 0.05
        meta = dumps({"thread_id": f"thread-{rng.randrange(threads)}"}) \
            if threads and rnd() < 0.2 else "{}"
        lock_rows.append((path_, agent_ids[rng.randrange(agents)], iso(at), iso(at + 300),
                          None if active else iso(at + 60 + rnd() * 200), meta))
    sess_rows = []
    caps = [["code"], ["code", "review"], ["plan"], ["test", "code"], []]
    for k, a in enumerate(agent_ids):
        created = t0 + HISTORY_S * k / max(agents, 1) * 0.9
        for old in range(2 if k % 2 == 0 else 1):
            sid = "%08x-%04x-4%03x-%04x-%012x" % (
                rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12),
                0x8000 | rng.getrandbits(14), rng.getrandbits(48))
            live = old == 0
            c = created if live else created - 3600
            sess_rows.append((sid, a, f"Agent {k}", dumps(caps[k % len(caps)]),
                              dumps({"client": "arc-mcp", "pid": 1000 + k}), iso(c),
                              iso(now if live else c + 600), 1 if live else 0))

    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")   # rewritten as WAL at the end
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-262144")
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO channels VALUES(?,?,?,'{}')",
                       [(c, iso(t0 - 60), agent_ids[0]) for c in chans])
        db.executemany("INSERT INTO messages VALUES(?,?,?,?,?,?,?,?,?,?,?)", msgs)
        db.executemany("INSERT INTO tasks VALUES(?,?,?,?,?,?,?)",
                       [(tid,) + tuple(t) for tid, t in sorted(tasks.items())])
        db.executemany("INSERT INTO claims VALUES(?,?,?,?,?,?,?,?)", claim_rows)
        db.executemany("INSERT INTO locks VALUES(?,?,?,?,?,?)", lock_rows)
        db.executemany("INSERT INTO sessions VALUES(?,?,?,?,?,?,?,?)", sess_rows)
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()
    return dict(messages=messages, threads=started, agents=agents, channels=len(chans) + 2,
                tasks=len(tasks), open_tasks=sum(1 for t in tasks.values() if t[3] == "open"))


def refresh(path, now=None):
    """Bring the clock-bound rows to `now`: live sessions seen now,
    unreleased claims and locks expiring in an hour. A hub started on the
    file then sees A live agents and those claims and locks active."""
    now = time.time() if now is None else now
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE sessions SET last_seen=? WHERE active=1", (iso(now),))
        db.execute("UPDATE claims SET expires_at=? WHERE released_at IS NULL",
                   (iso(now + 3600),))
        db.execute("UPDATE locks SET expires_at=? WHERE released_at IS NULL",
                   (iso(now + 3600),))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def generate(arc_cmd, out, messages, threads, agents, seed=1):
    """Write a new file at `out` (replacing it). Returns fill()'s counts."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(out + suffix):
            os.unlink(out + suffix)
    make_schema(arc_cmd, out)
    counts = fill(out, messages, threads, agents, seed)
    make_schema(arc_cmd, out, until=lambda: caught_up(out))
    return counts


def caught_up(path):
    """Has the hub built what it derives from the rows as it would have had
    it written them itself? arc folds messages into a thread summary
    (PROTOCOL §10.7) in the background after start on a foreign file."""
    db = sqlite3.connect(path, timeout=5)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name='arc_folds'").fetchone():
            return True
        return db.execute("SELECT coalesce((SELECT upto FROM arc_folds WHERE"
                          " name='thread_msgs'),0) >= coalesce((SELECT max(id)"
                          " FROM messages),0)").fetchone()[0] == 1
    finally:
        db.close()


def store(arc_cmd, messages, threads, agents, seed=1, log=None):
    """The path of a cached store with these parameters, generated (and
    kept under tests/out/stores/) when missing. The key covers the
    parameters, VERSION and the hub's schema, so a hub that changes its
    schema gets a file of its own."""
    os.makedirs(CACHE, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="schema-", dir=CACHE)
    try:
        probe = os.path.join(tmp, "schema.sqlite3")
        make_schema(arc_cmd, probe)
        schema = schema_of(probe)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    key = hashlib.sha256(f"{VERSION}|{messages}|{threads}|{agents}|{seed}|{schema}"
                         .encode()).hexdigest()[:12]
    path = os.path.join(CACHE, f"m{messages}-t{threads}-a{agents}-{key}.sqlite3")
    if os.path.exists(path):
        return path
    for old in os.listdir(CACHE):   # the same parameters, an older schema
        if old.startswith(f"m{messages}-t{threads}-a{agents}-"):
            os.unlink(os.path.join(CACHE, old))
    t = time.monotonic()
    part = path + ".part"
    counts = generate(arc_cmd, part, messages, threads, agents, seed)
    os.rename(part, path)
    if log:
        log(f"   store: {messages:,} messages, {counts['threads']:,} threads, "
            f"{agents:,} agents generated in {time.monotonic() - t:.1f} s")
    return path


def copy_fresh(path, dest_dir, name="arc.sqlite3"):
    """Copy a cached store into dest_dir (as `name`) and refresh it."""
    dest = os.path.join(dest_dir, name)
    shutil.copyfile(path, dest)
    os.chmod(dest, 0o600)
    refresh(dest)
    return dest


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arc", default=os.environ.get("ARC", "./arc"),
                    help="hub command that creates the schema (default $ARC or ./arc)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--messages", type=int, default=1000000)
    ap.add_argument("--threads", type=int, default=20000)
    ap.add_argument("--agents", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    t = time.monotonic()
    counts = generate(shlex.split(a.arc), a.out, a.messages, a.threads, a.agents, a.seed)
    refresh(a.out)
    counts["seconds"] = round(time.monotonic() - t, 1)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
