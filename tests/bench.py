"""Benchmark driver for arc (`make bench`); Python 3 standard library only.

usage: python3 tests/bench.py [--only NAME,...] [--list]
  ARC   the hub command under test (default ./arc)
  REF   optional second hub command, e.g. REF="python3 path/to/arc.py"; every
        measurement then also runs against it, and the table adds its
        figures and the ratio arc/REF
  BENCH the load generator (default tests/bench, built from tests/bench.c)
  BENCH_TMP  where the temporary hub directories go (default: the system's)

Every run starts a fresh hub (`CMD --host 127.0.0.1 --port P --storage
DIR/arc.sqlite3 --spool-dir DIR/spool --quiet`, working directory DIR) on a
free port and a new temporary directory, runs one `tests/bench` subcommand
against it and stops it with SIGTERM. Each measurement runs several times;
the table shows the median and the min-max over those runs. Raw figures go
to tests/out/bench.json.

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
import urllib.request

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

    def __init__(self, cmd, template=None):
        self.cmd = cmd
        self.dir = tempfile.mkdtemp(prefix="arc-bench-", dir=os.environ.get("BENCH_TMP"))
        self.storage = os.path.join(self.dir, "arc.sqlite3")
        self.spool = os.path.join(self.dir, "spool")
        if template:
            for name in os.listdir(template):
                if name.startswith("arc.sqlite3"):
                    shutil.copy(os.path.join(template, name), self.dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(self.dir, "hub.log"), "wb")
        self.proc = subprocess.Popen(
            cmd + ["--host", "127.0.0.1", "--port", str(self.port), "--storage",
                   self.storage, "--spool-dir", self.spool, "--quiet"],
            cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/v1/hub-info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hub did not start: {' '.join(cmd)}")
            time.sleep(0.02)

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


def with_hub(cmd, fn, template=None):
    hub = Hub(cmd, template)
    try:
        return fn(hub)
    finally:
        hub.stop()


def m_load(mode, conns, close, secs):
    def run(ctx):
        extra = ["--close"] if close else []
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


def m_coldstart_existing(ctx):
    """The same, but every start opens one existing storage file (written
    once beforehand by the same hub), as `arc ensure` usually does."""
    hub = Hub(ctx["cmd"])
    hub.stop(keep=True)
    try:
        return run_bench(["coldstart", "--runs", 5, "--dir", hub.dir, "--"] + ctx["cmd"] +
                         ["--host", "127.0.0.1", "--port", "{port}", "--storage",
                          hub.storage, "--spool-dir", "{dir}/spool", "--quiet"])
    finally:
        shutil.rmtree(hub.dir, ignore_errors=True)


def m_ensure(ctx):
    def go(hub):
        return run_bench(["exec", "--runs", 20, "--cwd", hub.dir, "--"] + ctx["cmd"] +
                         ["ensure", "--host", "127.0.0.1", "--port", hub.port,
                          "--storage", hub.storage, "--spool-dir", hub.spool])
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

def errors_of(raw):
    if "steps" in raw:
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
        tmpl = None
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
            runs = m.get("ref_runs", m["runs"]) if h["kind"] == SLOW else m["runs"]
            if h["kind"] == SLOW and m.get("ref_note"):
                notes.append(f"{m['key']}: {m['ref_note']}; arc/REF compares unlike loads.")
            ctx = dict(cmd=h["cmd"], kind=h["kind"], template=tmpl)
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
