"""Integration tests for arc's file-spool relay (PROTOCOL §11): sandboxed
agents that cannot open a socket write request files into a spool and read
the hub's answers back from it.

Run from the repository root:
  ARC=$PWD/arc python3 -m unittest tests.test_relay -v

The binding, as exercised here with a small client of our own:
  requests/<agent>/<request_id>.json   written by the client atomically (a
                                       ".*.tmp" file in that dir, then rename)
  requests/<agent>/<request_id>.work   the same file once the hub claimed it
  responses/<agent>/<request_id>.json  the answer, written atomically:
      {"request_id", "ok", "status", "body": <hub envelope>, "completed_at"}
      plus "error" when the hub envelope has one (or the request was bad).
<agent> is sanitised by the CLIENT like the reference does (runs of
[^A-Za-z0-9._-] -> "_", empty -> "agent"); the hub answers into the
responses/ directory of the same name.

Synchronisation uses deadlines (wait-for-condition), never fixed sleeps.
The only waits whose point is the passage of time are in the "must NOT
happen" tests (symlinks): there the hub gets a probe answered after the
trap was set plus RELAY_SCAN_WAIT for a full periodic rescan.

Tests that depend on arc's event-loop relay (latency, parking, symlink
refusal, the CLI) are arc-only; the rest also run against the reference
(ARC_REF=1), whose relay polls every 0.25 s.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hubtest import (REF, Hub, HubCase, arc_only, free_port, hub_command, parse_ts,  # noqa: E402
                     qs, uid, wait_for)

ANSWER_TIMEOUT = 10.0     # a well-formed relay request must be answered within this
CLIENT_POLL = 0.005       # our client's polling interval for the answer file
RELAY_SCAN_WAIT = 1.5     # > arc's 1 s check of the spool (ARC_RELAY_SCAN_MS)
ENVELOPE_KEYS = {"request_id", "ok", "status", "body", "completed_at"}
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def safe_agent(agent_id):
    """The reference's directory name for an agent id (client side)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(agent_id or "").strip())
    return cleaned or "agent"


def spool_of(hub):
    """The spool the harness passes to the hub (--spool-dir DIR/spool)."""
    return os.path.join(hub.dir, "spool")


def atomic_write(path, data):
    """Write bytes to path the way the binding requires: a dot-named .tmp
    file in the same directory, then os.replace."""
    d, name = os.path.split(path)
    tmp = os.path.join(d, ".%s.%s.tmp" % (name, uuid.uuid4().hex))
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


_MISSING = object()

# A known arc bug the reference does not have: expected to fail on arc only.
arc_bug = unittest.expectedFailure if not REF else (lambda f: f)


class RelayClient:
    """A tiny file-spool client: one agent, one spool."""

    def __init__(self, spool, agent_id, poll=CLIENT_POLL, dirname=None):
        self.spool = spool
        self.agent_id = agent_id
        self.poll = poll
        self.dirname = safe_agent(agent_id) if dirname is None else dirname
        self.req_dir = os.path.join(spool, "requests", self.dirname)
        self.resp_dir = os.path.join(spool, "responses", self.dirname)

    def ensure_dirs(self):
        os.makedirs(self.req_dir, exist_ok=True)
        os.makedirs(self.resp_dir, exist_ok=True)

    def request_path(self, rid):
        return os.path.join(self.req_dir, rid + ".json")

    def response_path(self, rid):
        return os.path.join(self.resp_dir, rid + ".json")

    def submit(self, method, path, body=_MISSING, rid=None):
        """Write one request file; return its request id (= file stem)."""
        rid = rid or uuid.uuid4().hex
        env = {"request_id": rid, "agent_id": self.agent_id, "method": method,
               "path": path, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if body is not _MISSING:
            env["body"] = body
        self.submit_raw(json.dumps(env, ensure_ascii=False).encode("utf-8"), rid)
        return rid

    def submit_raw(self, data, rid=None):
        rid = rid or uuid.uuid4().hex
        self.ensure_dirs()
        atomic_write(self.request_path(rid), data)
        return rid

    def answered(self, rid):
        return os.path.exists(self.response_path(rid))

    def wait(self, rid, timeout=ANSWER_TIMEOUT):
        """Poll for the answer file; return the parsed answer."""
        path = self.response_path(rid)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(path, "rb") as f:
                    return json.loads(f.read().decode("utf-8"))
            except FileNotFoundError:
                pass
            if time.monotonic() >= deadline:
                raise AssertionError("no relay answer for %s/%s within %.1fs"
                                     % (self.dirname, rid, timeout))
            time.sleep(self.poll)

    def call(self, method, path, body=_MISSING, timeout=ANSWER_TIMEOUT):
        rid = self.submit(method, path, body)
        return rid, self.wait(rid, timeout)


class RelayCase(HubCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.spool = spool_of(cls.hub)

    def client(self, agent_id=None, **kw):
        return RelayClient(self.spool, uid("ag") if agent_id is None else agent_id, **kw)

    def assertAnswer(self, answer, rid, status=None):
        """Check the relay answer envelope; return the hub envelope (body)."""
        self.assertIsInstance(answer, dict, answer)
        keys = set(ENVELOPE_KEYS)
        if "error" in answer:
            keys.add("error")
        self.assertEqual(set(answer), keys, answer)
        self.assertEqual(answer["request_id"], rid)
        self.assertRegex(answer["completed_at"], TS_RE)
        parse_ts(answer["completed_at"])
        body = answer["body"]
        self.assertIsInstance(body, dict, answer)
        self.assertIs(answer["ok"], body.get("ok"), answer)
        if isinstance(body.get("error"), str):
            self.assertEqual(answer.get("error"), body["error"])
        else:
            self.assertNotIn("error", answer)
        if status is not None:
            self.assertEqual(answer["status"], status, answer)
        return body

    def assertBadRequestAnswer(self, answer, rid):
        """A relay-level 400 for a request file the hub could not use."""
        self.assertIsInstance(answer, dict, answer)
        self.assertEqual(answer.get("status"), 400, answer)
        self.assertIs(answer.get("ok"), False, answer)
        self.assertIsInstance(answer.get("error"), str, answer)
        self.assertTrue(answer["error"].startswith("invalid relay request"), answer)
        self.assertEqual(answer.get("request_id"), rid, answer)
        self.assertRegex(answer.get("completed_at", ""), TS_RE)
        self.assertNotIn("body", answer)

    def rcall(self, client, method, path, body=_MISSING, status=None):
        rid, answer = client.call(method, path, body)
        return answer["status"], self.assertAnswer(answer, rid, status)

    def hcall(self, method, path, body=_MISSING):
        code, _, payload = self.hub.request(method, path,
                                            body=None if body is _MISSING else body)
        return code, payload


def normalise(value, tag, key=None):
    """Make two runs of the same scenario comparable: the run's tag becomes
    TAG, timestamps <ts>, message/task ids <id>, session ids <sid>."""
    if isinstance(value, dict):
        return {k.replace(tag, "TAG"): normalise(v, tag, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v, tag, key) for v in value]
    if key in ("session_id", "instance_id") and isinstance(value, str):
        return "<sid>"
    if isinstance(value, int) and not isinstance(value, bool) and key is not None and \
            (key == "id" or key.endswith("_id") or
             key in ("task_completed", "rolled_up", "blocked_by")):   # ids (§14)
        return "<id>"
    if isinstance(value, str):
        if TS_RE.match(value):
            return "<ts>"
        return value.replace(tag, "TAG")
    return value


# ── every endpoint family through the relay ─────────────────────────────

class RoundTripTests(RelayCase):

    def scenario(self, call, tag):
        """One conversation touching every endpoint family; call(method,
        path, body) -> (status, envelope). Returns the transcript."""
        a, b = tag + "-a", tag + "-b"
        ch, th = tag + "-ch", tag + "-th"
        out = []

        def step(method, path, body=_MISSING):
            status, env = call(method, path, body)
            out.append((method, path.replace(tag, "TAG"), status, env))
            return status, env

        # sessions
        _, s1 = step("POST", "/v1/sessions", {"agent_id": a, "display_name": "A",
                                              "capabilities": ["x"]})
        step("POST", "/v1/sessions", {"agent_id": a})                     # 409
        _, s2 = step("POST", "/v1/sessions", {"agent_id": a, "replace": True})
        step("POST", "/v1/sessions", {})                                  # 400
        step("POST", "/v1/sessions/%s/rename" % a, {"display_name": "  Renamed "})
        step("POST", "/v1/sessions/%s/rename" % (tag + "-ghost"), {"display_name": "X"})
        step("GET", qs("/v1/agents", capability="x"))
        # channels
        step("POST", "/v1/channels", {"name": ch, "created_by": a})       # 201
        step("POST", "/v1/channels", {"name": ch})                        # 200
        step("POST", "/v1/channels", {"metadata": []})                    # 400
        # messages
        _, root = step("POST", "/v1/messages", {"from_agent": a, "channel": ch, "kind": "task",
                                                "thread_id": th, "body": "root ünï"})
        rid = root["result"]["id"]
        _, sub = step("POST", "/v1/messages", {"from_agent": a, "channel": ch, "kind": "task",
                                               "thread_id": th, "body": "sub",
                                               "parent_task_id": rid})
        sid = sub["result"]["id"]
        step("POST", "/v1/messages", {"from_agent": b, "to_agent": a, "body": "dm",
                                      "attachments": [{"type": "text", "content": "c"}]})
        step("POST", "/v1/messages", {"from_agent": a, "channel": tag + "-nochan",
                                      "body": "x"})                      # 400
        step("POST", "/v1/messages", {"from_agent": a, "kind": "bogus", "body": "x"})
        step("GET", qs("/v1/messages", channel=ch))
        step("GET", qs("/v1/messages", thread_id=th, since_id=rid))
        step("GET", qs("/v1/messages", channel=ch, limit=1, tail="true"))
        step("GET", "/v1/messages")                                       # 400
        step("GET", qs("/v1/messages", channel=tag + "-nochan"))         # 404
        # events (timeout=0: answered at once)
        step("GET", qs("/v1/events", agent_id=a, channel=ch, timeout=0))
        step("GET", qs("/v1/events", agent_id=a, thread_id=th, since_id=rid, timeout=0))
        step("GET", qs("/v1/events", agent_id=a, channel=ch, exclude_self=1, timeout=0))
        step("GET", "/v1/events")                                         # 400
        # inbox
        step("GET", "/v1/inbox/" + a)
        step("GET", qs("/v1/inbox/" + a, since_id=-4))                  # 400
        # threads
        step("GET", "/v1/threads/" + th)
        step("GET", "/v1/threads/" + tag + "-nothread")                   # 404
        # claims
        step("POST", "/v1/claims", {"owner_agent_id": a, "claim_key": tag + "-ck",
                                    "thread_id": th, "metadata": {"k": 1}})
        step("POST", "/v1/claims", {"owner_agent_id": b, "claim_key": tag + "-ck"})  # denied
        step("POST", "/v1/claims/refresh", {"owner_agent_id": a, "claim_key": tag + "-ck",
                                            "ttl_sec": 600})
        step("GET", qs("/v1/claims", thread_id=th))
        step("POST", "/v1/claims/release", {"agent_id": a, "claim_key": tag + "-ck"})
        step("POST", "/v1/claims/release", {"agent_id": a, "claim_key": tag + "-ck"})  # 404
        step("POST", "/v1/claims", {"owner_agent_id": a, "ttl_sec": 1})  # 400
        # locks
        path = tag + "/src/f.c"
        step("POST", "/v1/locks", {"agent_id": a, "file_path": path,
                                   "metadata": {"thread_id": th}})
        step("POST", "/v1/locks", {"agent_id": b, "file_path": path})    # denied
        step("POST", "/v1/locks/refresh", {"agent_id": a, "file_path": path})
        step("GET", qs("/v1/locks", agent_id=a))
        step("POST", "/v1/locks/release", {"agent_id": a, "file_path": path})
        step("POST", "/v1/locks/release", {"agent_id": a, "file_path": path})   # 404
        # tasks
        step("GET", qs("/v1/tasks", thread_id=th))
        step("GET", qs("/v1/tasks", status="nope"))                      # 400
        step("POST", "/v1/tasks/%d/complete" % sid)                       # rolls up root
        step("POST", "/v1/tasks/%d/complete" % sid, {})
        step("POST", "/v1/tasks/999999999/complete")                      # 404
        step("GET", qs("/v1/tasks", thread_id=th, status="done"))
        # session delete
        step("DELETE", "/v1/sessions/" + s2["result"]["session_id"])
        step("DELETE", "/v1/sessions/" + s2["result"]["session_id"])      # 404
        step("DELETE", "/v1/sessions/" + s1["result"]["session_id"])      # 404 (replaced)
        # unknown route / method
        step("GET", "/v1/nope")
        if not REF:   # the reference answers 501 with HTML (PROTOCOL §12)
            step("PATCH", "/v1/channels", {})
            # shared memory (arc:kv, PROTOCOL §13), PUT included
            key = "/v1/kv/" + tag + "%2Fk"
            step("PUT", key, {"agent_id": a, "value": {"x": [1]}, "type": "fact"})
            step("PUT", key, {"agent_id": b, "value": 2, "version": 7})   # 409
            step("GET", key)
            step("GET", qs("/v1/kv", prefix=tag + "/"))
            step("DELETE", key + "?agent_id=" + b)
            step("GET", key + "/history")
        return out

    def test_every_endpoint_family_matches_http(self):
        client = self.client("rt-relay")
        relay_tag, http_tag = uid("R"), uid("H")

        def via_relay(method, path, body):
            return self.rcall(client, method, path, body)

        relayed = self.scenario(via_relay, relay_tag)
        direct = self.scenario(self.hcall, http_tag)
        self.assertEqual(len(relayed), len(direct))
        for r, h in zip(relayed, direct):
            with self.subTest(call="%s %s" % (r[0], r[1])):
                self.assertEqual(r[2], h[2], (r, h))           # status
                self.assertEqual(normalise(r[3], relay_tag), normalise(h[3], http_tag))
        statuses = [r[2] for r in relayed]
        # the scenario really exercised success and error paths
        for code in (200, 201, 400, 404, 409):
            self.assertIn(code, statuses)
        # spot checks on what the relay returned
        by_path = {(m, p): (s, e) for m, p, s, e in relayed}
        s, e = by_path[("POST", "/v1/sessions/TAG-a/rename")]
        self.assertEqual(e["result"]["display_name"], "Renamed")
        s, e = by_path[("GET", "/v1/inbox/TAG-a")]
        self.assertEqual([m["body"] for m in e["result"]], ["dm"])
        complete = [x for x in relayed if x[1].endswith("/complete") and x[2] == 200][0]
        self.assertIs(complete[3].get("parent_completed"), True)

    def test_global_reads_equal_http(self):
        """Read-only calls on shared state give exactly the HTTP answer."""
        client = self.client("rt-reader")
        agent = uid("boot")
        self.session(agent)
        self.channel()
        self.msg(body="seed", thread_id=uid("th"))
        for path in ("/v1/hub-info", "/v1/channels", qs("/v1/bootstrap", agent_id=agent),
                     "/v1/agents", "/v1/threads", "/v1/shutdown", "/v1/tasks", "/v1/claims",
                     "/v1/locks", qs("/v1/events", agent_id=agent, timeout=0)):
            with self.subTest(path=path):
                rstatus, renv = self.rcall(client, "GET", path)
                hstatus, henv = self.hcall("GET", path)
                self.assertEqual(rstatus, hstatus)
                self.assertEqual(renv, henv)
                self.assertIs(renv["ok"], True, renv)

    def test_hub_info_lists_relay(self):
        rid, answer = self.client().call("GET", "/v1/hub-info")
        env = self.assertAnswer(answer, rid, 200)
        self.assertIs(answer["ok"], True)
        self.assertIn("relay", env["result"]["features"])
        code, _, payload = self.hub.get("/v1/hub-info")
        self.assertIn("relay", payload["result"]["features"])

    def test_post_then_get_and_events(self):
        ch = self.channel()
        poster = self.client(uid("poster"))
        _, env = self.rcall(poster, "POST", "/v1/messages",
                            {"from_agent": poster.agent_id, "channel": ch, "body": "via relay"},
                            status=201)
        msg = env["result"]
        _, _, payload = self.hub.get("/v1/messages", channel=ch)
        self.assertEqual(payload["result"], [msg])
        self.msg(channel=ch, body="via http")
        _, env = self.rcall(poster, "GET", qs("/v1/messages", channel=ch), status=200)
        self.assertEqual([m["body"] for m in env["result"]], ["via relay", "via http"])
        _, env = self.rcall(poster, "GET", qs("/v1/events", agent_id=poster.agent_id, channel=ch,
                                              since_id=msg["id"], timeout=0), status=200)
        self.assertEqual([m["body"] for m in env["result"]], ["via http"])

    def test_null_and_absent_body_and_lowercase_method(self):
        c = self.client()
        rid = c.submit("get", "/v1/channels", None)
        self.assertAnswer(c.wait(rid), rid, 200)
        rid = c.submit("GET", "/v1/channels")
        self.assertAnswer(c.wait(rid), rid, 200)
        ch = uid("ch")
        rid = c.submit("post", "/v1/channels", {"name": ch})
        self.assertAnswer(c.wait(rid), rid, 201)

    def test_request_file_is_kept_as_work(self):
        c = self.client()
        rid, answer = c.call("GET", "/v1/hub-info")
        self.assertAnswer(answer, rid, 200)
        self.assertTrue(os.path.isfile(os.path.join(c.req_dir, rid + ".work")))
        self.assertFalse(os.path.exists(c.request_path(rid)))
        # no temporary files left behind in the answer directory
        self.assertEqual([n for n in os.listdir(c.resp_dir) if n.startswith(".")], [])

    def test_request_id_echoed_from_envelope(self):
        c = self.client()
        stem = uuid.uuid4().hex
        env = {"request_id": "my-id-1", "method": "GET", "path": "/v1/hub-info"}
        c.submit_raw(json.dumps(env).encode(), stem)
        answer = c.wait(stem)                       # the answer file is named by the stem
        self.assertAnswer(answer, "my-id-1", 200)
        stem = uuid.uuid4().hex
        c.submit_raw(json.dumps({"method": "GET", "path": "/v1/hub-info"}).encode(), stem)
        self.assertAnswer(c.wait(stem), stem, 200)  # no request_id: the stem

    @arc_only
    def test_stream_refused_through_relay(self):
        rid, answer = self.client().call("GET", qs("/v1/stream", agent_id=uid("st")))
        env = self.assertAnswer(answer, rid, 400)
        self.assertIn("/v1/events", env["error"])


# ── malformed request files ─────────────────────────────────────────────

class MalformedTests(RelayCase):

    BAD = [
        ("not_json", b"{this is not json"),
        ("array", b'[{"method": "GET", "path": "/v1/hub-info"}]'),
        ("missing_method", b'{"path": "/v1/hub-info"}'),
        ("relative_path", b'{"method": "GET", "path": "v1/x"}'),
        ("body_list", b'{"method": "POST", "path": "/v1/channels", "body": [1, 2]}'),
        ("empty_file", b""),
        ("string", b'"GET /v1/hub-info"'),
        ("body_string", b'{"method": "POST", "path": "/v1/channels", "body": "x"}'),
        ("invalid_utf8", b'{"method": "GET", "path": "/v1/hub-info\xff"}'),
    ]

    def test_each_gets_400_and_hub_keeps_serving(self):
        c = self.client(uid("bad"))
        rids = {}
        for name, data in self.BAD:
            rids[name] = c.submit_raw(data, rid="%s-%s" % (name, uuid.uuid4().hex[:8]))
        for name, rid in rids.items():
            with self.subTest(case=name):
                self.assertBadRequestAnswer(c.wait(rid), rid)
        self.assertTrue(self.hub.alive())
        self.assertOk(self.hub.get("/v1/hub-info"))
        # the same agent directory and a fresh one still work
        for client in (c, self.client()):
            _, env = self.rcall(client, "GET", "/v1/channels", status=200)
            self.assertIs(env["ok"], True)

    def test_interleaved_with_good_requests(self):
        c = self.client(uid("mix"))
        good, bad = [], []
        for i in range(5):
            bad.append(c.submit_raw(b"nope", rid="bad-%d-%s" % (i, uuid.uuid4().hex[:6])))
            good.append(c.submit("GET", "/v1/hub-info", rid="good-%d-%s" % (i, uuid.uuid4().hex[:6])))
        for rid in bad:
            self.assertBadRequestAnswer(c.wait(rid), rid)
        for rid in good:
            self.assertAnswer(c.wait(rid), rid, 200)

    def test_empty_and_odd_agent_dirs_are_harmless(self):
        """An agent directory with no requests, a plain file where a
        directory belongs, and a dot-directory: the scans that visit them
        (creating a new agent directory triggers one) must not upset the
        hub. (Under the sanitizer build, an empty directory once made
        relay_scan() pass NULL to qsort().)"""
        reqs = os.path.join(self.spool, "requests")
        os.makedirs(os.path.join(reqs, uid("empty")))
        os.makedirs(os.path.join(reqs, "." + uid("dot")))
        with open(os.path.join(reqs, uid("plainfile")), "w") as f:
            f.write("{}")
        with open(os.path.join(reqs, uid("stray") + ".json"), "w") as f:
            f.write('{"method": "GET", "path": "/v1/hub-info"}')
        for _ in range(2):   # each in a new directory
            rid, answer = self.client(uid("after-empty")).call("GET", "/v1/hub-info")
            self.assertAnswer(answer, rid, 200)
        self.assertTrue(self.hub.alive())

    def test_ignored_names_are_not_claimed(self):
        """Temporary files and files not ending in .json are not requests."""
        c = self.client(uid("names"))
        c.ensure_dirs()
        env = json.dumps({"method": "GET", "path": "/v1/hub-info"}).encode()
        for name in ("x.json.tmp", ".x.json.abc.tmp", "notes.txt", "x.JSON.bak"):
            with open(os.path.join(c.req_dir, name), "wb") as f:
                f.write(env)
        rid, answer = c.call("GET", "/v1/hub-info")      # sync: the directory was seen
        self.assertAnswer(answer, rid, 200)
        self.assertEqual(sorted(n for n in os.listdir(c.req_dir) if not n.startswith(rid)),
                         [".x.json.abc.tmp", "notes.txt", "x.JSON.bak", "x.json.tmp"])
        self.assertEqual(os.listdir(c.resp_dir), [rid + ".json"])

    def test_dot_request_id_is_served(self):
        # Regression: file names starting with "." used to be skipped, so a
        # request id starting with a dot was never answered (temporary
        # files end in .tmp, not .json, so they need no such rule).
        c = self.client(uid("dotid"))
        rid = c.submit("GET", "/v1/hub-info", rid="." + uuid.uuid4().hex)
        self.assertAnswer(c.wait(rid, timeout=2 * RELAY_SCAN_WAIT), rid, 200)


# ── agent directory names ───────────────────────────────────────────────

class AgentNameTests(RelayCase):

    def check_agent(self, agent_id, expected_dir, timeout=ANSWER_TIMEOUT):
        self.assertEqual(safe_agent(agent_id), expected_dir)
        c = self.client(agent_id)
        rid, answer = c.call("POST", "/v1/sessions", {"agent_id": agent_id or "anon",
                                                       "replace": True}, timeout=timeout)
        env = self.assertAnswer(answer, rid, 201)
        stored_id = agent_id.strip() or "anon"     # the hub trims agent_id
        self.assertEqual(env["result"]["agent_id"], stored_id)
        rid, answer = c.call("GET", qs("/v1/bootstrap", agent_id=stored_id))
        env = self.assertAnswer(answer, rid, 200)
        self.assertEqual(env["result"]["session"]["agent_id"], stored_id)
        self.assertTrue(os.path.isfile(os.path.join(self.spool, "responses", expected_dir,
                                                    rid + ".json")))

    def test_space_and_slash(self):
        self.check_agent("a b/c", "a_b_c")

    def test_unicode(self):
        self.check_agent("ünïcode", "_n_code")

    def test_empty_is_agent(self):
        self.check_agent("", "agent")

    def test_whitespace_trimmed(self):
        self.check_agent("  padded id \t", "padded_id")

    # A flaw of the binding itself, in reference-style clients: the
    # sanitising rule keeps dots, so agents "." and ".." get requests/
    # itself and the spool root as their directory, and no hub can answer
    # them. These two tests document that; arc's own client avoids it by
    # turning a leading "." into "_" (test_cli_dot_agents below).

    @unittest.expectedFailure
    def test_dotdot(self):
        self.check_agent("..", "..", timeout=2 * RELAY_SCAN_WAIT)

    @unittest.expectedFailure
    def test_dot(self):
        self.check_agent(".", ".", timeout=2 * RELAY_SCAN_WAIT)

    def test_leading_dot(self):
        # Regression: agent directories starting with "." used to be
        # skipped, so a reference-style client's ".hidden" was never
        # answered. (arc's own client writes to "_hidden" instead.)
        self.check_agent(".hidden", ".hidden", timeout=2 * RELAY_SCAN_WAIT)

    @arc_only
    def test_recreated_agent_dir_is_watched_again(self):
        # Regression: the dead inotify watch of a removed agent directory
        # used to be kept by name, so a recreated directory was only served
        # by the 1 s rescan (~1000 ms per call instead of a few ms).
        c = self.client(uid("again"))
        for _ in range(2):
            self.rcall(c, "GET", "/v1/hub-info", status=200)
        shutil.rmtree(c.req_dir)
        shutil.rmtree(c.resp_dir)
        c.ensure_dirs()
        self.rcall(c, "GET", "/v1/hub-info", status=200)   # the new dir is scanned once
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            self.rcall(c, "GET", "/v1/hub-info", status=200)
            times.append(time.monotonic() - t0)
        self.assertLess(max(times), 0.5, times)


# ── many agents at once ─────────────────────────────────────────────────

class ConcurrencyTests(RelayCase):

    def test_twenty_agents_five_messages_each(self):
        ch = self.channel()
        n_agents, n_msgs = 20, 5
        errors, answers = [], []
        lock = threading.Lock()

        def agent(i):
            try:
                c = self.client("conc-%02d-%s" % (i, uuid.uuid4().hex[:4]))
                mine = []
                for k in range(n_msgs):
                    text = "m%02d-%d" % (i, k)
                    rid, answer = c.call("POST", "/v1/messages",
                                         {"from_agent": c.agent_id, "channel": ch, "body": text})
                    env = self.assertAnswer(answer, rid, 201)
                    self.assertEqual(env["result"]["body"], text)
                    self.assertEqual(env["result"]["from_agent"], c.agent_id)
                    mine.append(env["result"]["id"])
                rid, answer = c.call("GET", qs("/v1/messages", channel=ch, limit=1000))
                env = self.assertAnswer(answer, rid, 200)
                seen = {m["id"]: m for m in env["result"]}
                for k, mid in enumerate(mine):
                    self.assertIn(mid, seen)
                    self.assertEqual(seen[mid]["body"], "m%02d-%d" % (i, k))
                    self.assertEqual(seen[mid]["from_agent"], c.agent_id)
                with lock:
                    answers.extend(mine)
            except BaseException as e:   # noqa: B902 - reported below
                with lock:
                    errors.append("agent %d: %r" % (i, e))

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(n_agents)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(answers), n_agents * n_msgs)
        self.assertEqual(len(set(answers)), n_agents * n_msgs)
        stored = self.assertOk(self.hub.get("/v1/messages", channel=ch, limit=1000))
        self.assertEqual(len(stored), n_agents * n_msgs)
        self.assertEqual(sorted(m["id"] for m in stored), sorted(answers))
        self.assertEqual(sorted(m["body"] for m in stored),
                         sorted("m%02d-%d" % (i, k) for i in range(n_agents) for k in range(n_msgs)))


# ── latency and head-of-line blocking (arc's relay is served by the loop)

@arc_only
class LatencyTests(RelayCase):

    def test_long_poll_does_not_block_other_agents(self):
        ch = self.channel()
        latest = self.assertOk(self.hub.get("/v1/hub-info"))["latest_message_id"]
        a = self.client(uid("waiter"))
        b = self.client(uid("busy"))
        rid_a = a.submit("GET", qs("/v1/events", agent_id=a.agent_id, channel=ch,
                                   since_id=latest, timeout=10))
        # A is parked once a request written after it has been answered and
        # A's request file has been claimed (.work) without an answer.
        wait_for(lambda: os.path.exists(os.path.join(a.req_dir, rid_a + ".work")), 5, 0.005)
        times = []
        for _ in range(10):
            t0 = time.monotonic()
            rid, answer = b.call("GET", "/v1/channels")
            times.append(time.monotonic() - t0)
            self.assertAnswer(answer, rid, 200)
            self.assertFalse(a.answered(rid_a), "the long-poll was answered without a message")
        print("\n  relay calls while another agent long-polls: median %.2f ms, max %.2f ms"
              % (statistics.median(times) * 1e3, max(times) * 1e3), file=sys.stderr)
        for t in times:
            self.assertLess(t, 1.0)
        t0 = time.monotonic()
        posted = self.msg(channel=ch, body="wake up")
        answer = a.wait(rid_a, timeout=5)
        woke = time.monotonic() - t0
        print("  long-poll woken by a post after %.2f ms" % (woke * 1e3), file=sys.stderr)
        self.assertLess(woke, 2.0)
        env = self.assertAnswer(answer, rid_a, 200)
        self.assertEqual([m["id"] for m in env["result"]], [posted["id"]])

    def test_parked_relay_long_poll_times_out_empty(self):
        c = self.client()
        ch = self.channel()
        t0 = time.monotonic()
        rid, answer = c.call("GET", qs("/v1/messages", channel=ch, since_id=10**9, timeout=0.5))
        took = time.monotonic() - t0
        env = self.assertAnswer(answer, rid, 200)
        self.assertEqual(env["result"], [])
        self.assertGreaterEqual(took, 0.45)
        self.assertLess(took, 3.0)

    def test_round_trip_latency(self):
        c = self.client(uid("lat"), poll=0.001)
        times = []
        for _ in range(100):
            t0 = time.monotonic()
            rid, answer = c.call("GET", "/v1/hub-info")
            times.append(time.monotonic() - t0)
            self.assertEqual(answer["status"], 200)
        times.sort()
        print("\n  relay round trip (GET /v1/hub-info, 1 ms client polling, n=100): "
              "median %.2f ms, p99 %.2f ms, max %.2f ms"
              % (statistics.median(times) * 1e3, times[98] * 1e3, times[-1] * 1e3),
              file=sys.stderr)


# ── spool written while no hub ran ──────────────────────────────────────

class OfflineSpoolTests(unittest.TestCase):

    def make_dir(self):
        d = tempfile.mkdtemp(prefix="arc-relay-test-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def start_hub(self, d, storage=None):
        hub = Hub()
        hub.dir = d              # the harness then uses d/spool as --spool-dir
        hub.start(storage=storage)
        self.addCleanup(hub.stop_process)
        return hub

    def test_three_requests_written_before_start_in_name_order(self):
        d = self.make_dir()
        spool = os.path.join(d, "spool")
        c = RelayClient(spool, "pre")
        ch = uid("ch")
        rids = [c.submit("POST", "/v1/channels", {"name": ch}, rid="0001-" + uuid.uuid4().hex),
                c.submit("POST", "/v1/messages", {"from_agent": "pre", "channel": ch, "body": "one"},
                         rid="0002-" + uuid.uuid4().hex),
                c.submit("GET", qs("/v1/messages", channel=ch), rid="0003-" + uuid.uuid4().hex)]
        hub = self.start_hub(d)
        answers = [c.wait(r) for r in rids]
        self.assertEqual([a["status"] for a in answers], [201, 201, 200], answers)
        self.assertEqual([m["body"] for m in answers[2]["body"]["result"]], ["one"])
        self.assertTrue(hub.alive())

    def test_requests_written_while_hub_down(self):
        d = self.make_dir()
        spool = os.path.join(d, "spool")
        hub = self.start_hub(d)
        c = RelayClient(spool, "restarter")
        ch = uid("ch")
        rid, answer = c.call("POST", "/v1/channels", {"name": ch})
        self.assertEqual(answer["status"], 201, answer)
        hub.stop_process()
        self.assertFalse(hub.alive())
        r1 = c.submit("POST", "/v1/messages", {"from_agent": "restarter", "channel": ch,
                                               "body": "while down"})
        r2 = RelayClient(spool, "second").submit("GET", qs("/v1/messages", channel=ch))
        self.assertFalse(c.answered(r1))
        hub.start(hub.extra_args, storage=hub.storage)
        a1 = c.wait(r1)
        a2 = RelayClient(spool, "second").wait(r2)
        self.assertEqual(a1["status"], 201, a1)
        self.assertEqual(a2["status"], 200, a2)
        _, _, payload = hub.get("/v1/messages", channel=ch)
        self.assertEqual([m["body"] for m in payload["result"]], ["while down"])

    @arc_only
    def test_no_request_lost_across_sigterm(self):
        # Regression: a SIGTERMed hub used to keep claiming request files
        # (.json -> .work) while draining and drop them unanswered; a
        # restarted hub ignores .work files, so those clients waited for
        # ever. Every request must end up answered, by the old hub or (still
        # .json) by the new one.
        d = self.make_dir()
        spool = os.path.join(d, "spool")
        hub = self.start_hub(d)
        clients = [RelayClient(spool, "flood-%d" % k) for k in range(4)]
        sent, stop = [], threading.Event()

        def flood(c):
            while not stop.is_set():
                sent.append((c, c.submit("GET", "/v1/hub-info")))

        threads = [threading.Thread(target=flood, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(sent) > 200 and any(c.answered(r) for c, r in sent[:50]),
                     5, 0.01)
            hub.stop_process()
        finally:
            stop.set()
            for t in threads:
                t.join()
        hub.start(hub.extra_args, storage=hub.storage)
        try:
            # A deadline, not a timing: thousands of requests under a
            # sanitizer build on a loaded machine take seconds.
            wait_for(lambda: all(c.answered(r) for c, r in sent), 60, 0.05)
        except AssertionError:
            lost = [r for c, r in sent if not c.answered(r)]
            self.fail("%d of %d requests never answered (%d left as .work)"
                      % (len(lost), len(sent),
                         sum(os.path.exists(os.path.join(c.req_dir, r + ".work"))
                             for c, r in sent if not c.answered(r))))

    @arc_only
    def test_parked_relay_request_answered_on_shutdown(self):
        """SIGTERM answers a relayed long-poll (with []) before the hub exits."""
        d = self.make_dir()
        hub = self.start_hub(d)
        c = RelayClient(os.path.join(d, "spool"), uid("parked"))
        rid = c.submit("GET", qs("/v1/events", agent_id=c.agent_id, since_id=10**9,
                                 timeout=30))
        wait_for(lambda: os.path.exists(os.path.join(c.req_dir, rid + ".work")), 5, 0.005)
        # make sure the loop has the request (a later request is answered)
        r2, a2 = c.call("GET", "/v1/hub-info")
        self.assertEqual(a2["status"], 200)
        self.assertFalse(c.answered(rid))
        hub.stop_process()
        answer = c.wait(rid, timeout=1)
        self.assertEqual(answer["status"], 200, answer)
        self.assertEqual(answer["body"]["result"], [])


# ── nothing outside the spool is touched ────────────────────────────────

@arc_only
class PathEscapeTests(RelayCase):

    def outside_dir(self):
        d = tempfile.mkdtemp(prefix="arc-relay-outside-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def settle(self):
        """Let the relay see the spool: a probe in a NEW agent directory
        (its creation is an event like the trap's) is answered, then one
        check interval passes. The wait is the point of these tests."""
        rid, answer = self.client(uid("probe")).call("GET", "/v1/hub-info")
        self.assertEqual(answer["status"], 200)
        time.sleep(RELAY_SCAN_WAIT)

    def test_symlinked_agent_dir_is_ignored(self):
        outside = self.outside_dir()
        body = uid("SECRET-DIR")
        req = {"request_id": "x", "method": "POST", "path": "/v1/messages",
               "body": {"from_agent": "evil", "body": body}}
        with open(os.path.join(outside, "x.json"), "w") as f:
            json.dump(req, f)
        evil = "evil-" + uuid.uuid4().hex[:6]
        os.symlink(outside, os.path.join(self.spool, "requests", evil))
        self.settle()
        self.assertEqual(sorted(os.listdir(outside)), ["x.json"])
        self.assertFalse(os.path.exists(os.path.join(self.spool, "responses", evil)))
        stored = self.assertOk(self.hub.get("/v1/messages", channel="general", limit=1000))
        self.assertNotIn(body, [m["body"] for m in stored])
        self.assertTrue(self.hub.alive())

    def test_symlinked_request_file_is_not_followed(self):
        outside = self.outside_dir()
        body = uid("SECRET-FILE")
        target = os.path.join(outside, "secret.json")
        data = json.dumps({"method": "POST", "path": "/v1/messages",
                           "body": {"from_agent": "evil", "body": body}})
        with open(target, "w") as f:
            f.write(data)
        c = self.client(uid("victim"))
        c.ensure_dirs()
        link = c.request_path("link")
        os.symlink(target, link)
        # a normal request in the same directory is still served
        rid, answer = c.call("GET", "/v1/hub-info")
        self.assertAnswer(answer, rid, 200)
        self.settle()
        self.assertTrue(os.path.islink(link))
        self.assertFalse(os.path.lexists(os.path.join(c.req_dir, "link.work")))
        self.assertFalse(os.path.exists(c.response_path("link")))
        with open(target) as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.listdir(outside), ["secret.json"])
        stored = self.assertOk(self.hub.get("/v1/messages", channel="general", limit=1000))
        self.assertNotIn(body, [m["body"] for m in stored])

    def test_symlinked_response_dir_is_not_written(self):
        outside = self.outside_dir()
        agent = uid("resp-evil")
        c = self.client(agent)
        os.makedirs(c.req_dir)
        os.symlink(outside, c.resp_dir)
        rid = c.submit("GET", "/v1/hub-info")
        # the request is claimed, but the answer must not land outside
        wait_for(lambda: os.path.exists(os.path.join(c.req_dir, rid + ".work")), 5, 0.005)
        self.settle()
        self.assertEqual(os.listdir(outside), [])
        self.assertTrue(self.hub.alive())


# ── the CLI over the relay ──────────────────────────────────────────────

@arc_only
class CliRelayTests(RelayCase):

    def setUp(self):
        self.dead_url = "http://127.0.0.1:%d" % free_port()   # nobody listens here
        self.cwd = tempfile.mkdtemp(prefix="arc-relay-cli-")
        self.addCleanup(shutil.rmtree, self.cwd, True)

    def arc(self, *args, env_extra=None, timeout=30):
        env = {k: v for k, v in os.environ.items()
               if k not in ("ARC_URL", "ARC_AGENT", "ARC_RELAY_DIR")}
        env["ARC_URL"] = self.dead_url       # HTTP would fail: the relay must be used
        env.update(env_extra or {})
        return subprocess.run(hub_command() + [str(a) for a in args], cwd=self.cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def test_post_and_poll(self):
        text = uid("hello")
        p = self.arc("post", "--agent", "sandboxed", "--relay-dir", self.spool, text)
        self.assertEqual(p.returncode, 0, p.stderr)
        stored = self.assertOk(self.hub.get("/v1/messages", channel="general", limit=1000))
        mine = [m for m in stored if m["body"] == text]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["from_agent"], "sandboxed")
        self.assertIn(text, p.stdout.decode())
        p = self.arc("poll", "--agent", "x-" + uuid.uuid4().hex[:6], "--relay-dir", self.spool,
                     "--timeout", "0")
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [json.loads(l) for l in p.stdout.decode().splitlines() if l.strip()]
        self.assertIn(text, [m["body"] for m in lines])
        self.assertTrue(os.path.isdir(os.path.join(self.spool, "responses", "sandboxed")))

    def test_env_relay_dir(self):
        agent = uid("envy")
        p = self.arc("whoami", "--agent", agent, env_extra={"ARC_RELAY_DIR": self.spool})
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(agent, p.stdout.decode())
        sessions = self.assertOk(self.hub.get("/v1/agents"))
        self.assertIn(agent, [s["agent_id"] for s in sessions])

    def test_odd_agent_name_uses_sanitised_dir(self):
        agent = "cli agent/" + uuid.uuid4().hex[:6]
        text = uid("odd")
        p = self.arc("post", "--agent", agent, "--relay-dir", self.spool, text)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(os.path.isdir(os.path.join(self.spool, "responses", safe_agent(agent))))
        stored = self.assertOk(self.hub.get("/v1/messages", channel="general", limit=1000))
        self.assertIn((agent, text), [(m["from_agent"], m["body"]) for m in stored])

    def test_cli_dot_agents(self):
        # arc's client maps a leading "." to "_", so even "." and ".."
        # get a directory of their own inside the spool.
        for agent, d in ((".", "_"), ("..", "_."), (".hid", "_hid")):
            p = self.arc("whoami", "--agent", agent, "--relay-dir", self.spool)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertTrue(os.path.isdir(os.path.join(self.spool, "responses", d)), d)

    def test_hub_refusal_exits_1(self):
        p = self.arc("post", "--agent", "refused", "--relay-dir", self.spool,
                     "--channel", uid("nochan"), "x")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("channel does not exist", p.stderr.decode())

    def test_no_hub_exit_code_documented(self):
        # Waiting out the CLI's 15 s relay timeout would blow the time
        # budget; only check that exit 2 for "no hub" is documented.
        p = self.arc("post", "--help")
        self.assertEqual(p.returncode, 0)
        out = p.stdout.decode()
        self.assertIn("--relay-dir", out)
        self.assertIn("ARC_RELAY_DIR", out)
        self.assertRegex(out, r"2 usage or\s+no hub")


if __name__ == "__main__":
    unittest.main()
