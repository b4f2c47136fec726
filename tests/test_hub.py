"""Protocol-semantics integration tests for the arc hub (Arc Protocol v1).

Run: python3 -m unittest discover -s tests -p 'test_*.py' -v
See hubtest.py for the environment variables that pick the hub binary.
"""

import http.client
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import unittest

from hubtest import (REF, Hub, HubCase, arc_only, hub_command, parse_ts, qs,
                     reference_py, uid, wait_for)

MESSAGE_FIELDS = {"id", "ts", "from_agent", "to_agent", "channel", "kind", "body",
                  "attachments", "reply_to", "thread_id", "metadata"}
SESSION_FIELDS = {"session_id", "agent_id", "display_name", "capabilities", "metadata",
                  "created_at", "last_seen", "active"}
CLAIM_FIELDS = {"claim_key", "thread_id", "task_message_id", "owner_agent_id", "claimed_at",
                "expires_at", "released_at", "metadata"}
LOCK_FIELDS = {"file_path", "agent_id", "locked_at", "expires_at", "released_at", "metadata"}
TASK_FIELDS = {"task_id", "parent_task_id", "channel", "thread_id", "status", "created_at",
               "completed_at"}
THREAD_FIELDS = {"thread_id", "channel", "root_task_id", "latest_message_id", "latest_message_ts",
                 "latest_artifact_id", "message_count", "total_task_count", "open_task_count",
                 "active_claim_count", "active_lock_count", "status"}
KINDS = ["artifact", "chat", "claim", "notice", "release", "task", "task_request", "task_result"]
INSTANCE_RE = re.compile(r"^mh1-[0-9a-f]{20}$")


# ── sessions ────────────────────────────────────────────────────────────

class SessionTests(HubCase):

    def test_create_with_defaults(self):
        agent = uid("sess")
        s = self.assertOk(self.hub.post("/v1/sessions", {"agent_id": agent}), 201)
        self.assertEqual(set(s), SESSION_FIELDS)
        self.assertEqual(s["agent_id"], agent)
        self.assertEqual(s["display_name"], agent)
        self.assertEqual(s["capabilities"], [])
        self.assertEqual(s["metadata"], {})
        self.assertIs(s["active"], True)
        self.assertIsInstance(s["session_id"], str)
        self.assertTrue(s["session_id"])
        self.assertTimestamp(s["created_at"])
        self.assertTimestamp(s["last_seen"])

    def test_create_with_fields(self):
        agent = uid("sess")
        s = self.session(agent, display_name="Worker A", capabilities=["review", "build"],
                         metadata={"k": [1, 2], "n": None})
        self.assertEqual(s["display_name"], "Worker A")
        self.assertEqual(s["capabilities"], ["review", "build"])
        self.assertEqual(s["metadata"], {"k": [1, 2], "n": None})

    def test_validation(self):
        self.assertIn("agent_id", self.assertErr(self.hub.post("/v1/sessions", {}), 400))
        self.assertErr(self.hub.post("/v1/sessions", {"agent_id": "   "}), 400)
        self.assertErr(self.hub.post("/v1/sessions", {"agent_id": uid(), "capabilities": "review"}), 400)
        self.assertErr(self.hub.post("/v1/sessions", {"agent_id": uid(), "metadata": [1]}), 400)
        self.assertErr(self.hub.post("/v1/sessions", {"agent_id": uid(), "metadata": "x"}), 400)

    def test_collision_and_replace(self):
        agent = uid("sess")
        first = self.session(agent)
        self.assertErr(self.hub.post("/v1/sessions", {"agent_id": agent}), 409)
        self.assertErr(self.hub.post("/v1/sessions", {"agent_id": agent, "replace": False}), 409)
        second = self.assertOk(self.hub.post("/v1/sessions", {"agent_id": agent, "replace": True}), 201)
        self.assertNotEqual(first["session_id"], second["session_id"])
        self.assertEqual(second["agent_id"], agent)
        # exactly one live session for the agent, and it is the new one
        live = [a for a in self.assertOk(self.hub.get("/v1/agents")) if a["agent_id"] == agent]
        self.assertEqual([a["session_id"] for a in live], [second["session_id"]])
        # the replaced session is inactive: deleting it is a 404
        self.assertErr(self.hub.delete("/v1/sessions/" + first["session_id"]), 404)
        self.assertOk(self.hub.delete("/v1/sessions/" + second["session_id"]))

    def test_rename(self):
        agent = uid("sess")
        s = self.session(agent)
        r = self.assertOk(self.hub.post("/v1/sessions/%s/rename" % agent, {"display_name": "  New Name "}))
        self.assertEqual(r["display_name"], "New Name")
        self.assertEqual(r["agent_id"], agent)
        self.assertEqual(r["session_id"], s["session_id"])
        self.assertEqual(set(r), SESSION_FIELDS)
        live = [a for a in self.assertOk(self.hub.get("/v1/agents")) if a["agent_id"] == agent]
        self.assertEqual(live[0]["display_name"], "New Name")
        # exactly 64 characters (multi-byte) is allowed
        name64 = "é" * 64
        r = self.assertOk(self.hub.post("/v1/sessions/%s/rename" % agent, {"display_name": name64}))
        self.assertEqual(r["display_name"], name64)

    def test_rename_validation(self):
        agent = uid("sess")
        self.session(agent)
        path = "/v1/sessions/%s/rename" % agent
        self.assertErr(self.hub.post(path, {}), 400)
        self.assertErr(self.hub.post(path, {"display_name": ""}), 400)
        self.assertErr(self.hub.post(path, {"display_name": "   "}), 400)
        self.assertErr(self.hub.post(path, {"display_name": "x" * 65}), 400)
        # nothing changed
        live = [a for a in self.assertOk(self.hub.get("/v1/agents")) if a["agent_id"] == agent]
        self.assertEqual(live[0]["display_name"], agent)

    def test_rename_unknown_agent(self):
        self.assertErr(self.hub.post("/v1/sessions/%s/rename" % uid("ghost"), {"display_name": "X"}), 404)

    def test_delete(self):
        agent = uid("sess")
        s = self.session(agent)
        r = self.assertOk(self.hub.delete("/v1/sessions/" + s["session_id"]))
        self.assertEqual(r, {"session_id": s["session_id"], "deleted": True})
        self.assertErr(self.hub.delete("/v1/sessions/" + s["session_id"]), 404)
        self.assertErr(self.hub.delete("/v1/sessions/" + uid("nope")), 404)
        agents = [a["agent_id"] for a in self.assertOk(self.hub.get("/v1/agents"))]
        self.assertNotIn(agent, agents)
        # rename of an agent without an active session is a 404
        self.assertErr(self.hub.post("/v1/sessions/%s/rename" % agent, {"display_name": "X"}), 404)
        # no collision any more
        self.session(agent)


# ── agents ──────────────────────────────────────────────────────────────

class AgentTests(HubCase):

    def test_list_and_capability_filter(self):
        a, b = uid("ag"), uid("ag")
        cap = uid("cap")
        self.session(a, capabilities=[cap, "other"])
        self.session(b, capabilities=["other"])
        agents = self.assertOk(self.hub.get("/v1/agents"))
        ids = [x["agent_id"] for x in agents]
        self.assertIn(a, ids)
        self.assertIn(b, ids)
        for x in agents:
            self.assertEqual(set(x), SESSION_FIELDS)
            self.assertIs(x["active"], True)
        only = self.assertOk(self.hub.get("/v1/agents", capability=cap))
        self.assertEqual([x["agent_id"] for x in only], [a])
        both = [x["agent_id"] for x in self.assertOk(self.hub.get("/v1/agents", capability="other"))]
        self.assertIn(a, both)
        self.assertIn(b, both)
        self.assertEqual(self.assertOk(self.hub.get("/v1/agents", capability=uid("nocap"))), [])

    def test_as_touches_session(self):
        agent = uid("ag")
        s = self.session(agent)
        created = parse_ts(s["created_at"])

        def touched():
            rows = self.assertOk(self.hub.get("/v1/agents", **{"as": agent}))
            row = [x for x in rows if x["agent_id"] == agent][0]
            return parse_ts(row["last_seen"]) > created
        wait_for(touched, timeout=5, interval=0.1, msg="GET /v1/agents?as= did not refresh last_seen")

    def test_as_unknown_agent(self):
        rows = self.assertOk(self.hub.get("/v1/agents", **{"as": uid("ghost")}))
        self.assertIsInstance(rows, list)


# ── channels ────────────────────────────────────────────────────────────

class ChannelTests(HubCase):

    def test_default_channels(self):
        chans = self.assertOk(self.hub.get("/v1/channels"))
        names = [c["name"] for c in chans]
        self.assertIn("general", names)
        self.assertIn("direct", names)
        for c in chans:
            self.assertEqual(set(c), {"name", "created_at", "created_by", "metadata"})
            self.assertTimestamp(c["created_at"])
            self.assertIsInstance(c["metadata"], dict)

    def test_create_then_existing(self):
        name = uid("ch")
        c = self.assertOk(self.hub.post("/v1/channels", {"name": name, "created_by": "alice",
                                                         "metadata": {"topic": "x"}}), 201)
        self.assertEqual(c["name"], name)
        self.assertEqual(c["created_by"], "alice")
        self.assertEqual(c["metadata"], {"topic": "x"})
        self.assertTimestamp(c["created_at"])
        again = self.assertOk(self.hub.post("/v1/channels", {"name": name, "created_by": "bob"}), 200)
        self.assertEqual(again, c)
        names = [x["name"] for x in self.assertOk(self.hub.get("/v1/channels"))]
        self.assertEqual(names.count(name), 1)
        # general already exists
        self.assertOk(self.hub.post("/v1/channels", {"name": "general"}), 200)

    def test_create_defaults(self):
        c = self.assertOk(self.hub.post("/v1/channels", {"name": uid("ch")}), 201)
        self.assertIsNone(c["created_by"])
        self.assertEqual(c["metadata"], {})

    def test_validation(self):
        self.assertErr(self.hub.post("/v1/channels", {}), 400)
        self.assertErr(self.hub.post("/v1/channels", {"name": "  "}), 400)
        self.assertErr(self.hub.post("/v1/channels", {"name": uid(), "metadata": [1]}), 400)


# ── hub-info ────────────────────────────────────────────────────────────

class HubInfoTests(HubCase):

    def test_required_fields(self):
        status, headers, payload = self.hub.get("/v1/hub-info")
        info = self.assertOk((status, headers, payload))
        for field in ("instance_id", "protocol_version", "features", "message_kinds",
                      "max_body_chars", "max_attachment_chars", "max_attachments",
                      "default_channel"):
            self.assertIn(field, info)
        self.assertEqual(info["protocol_version"], "1")
        self.assertEqual(sorted(info["message_kinds"]), KINDS)
        self.assertEqual(len(info["message_kinds"]), 8)
        self.assertIsInstance(info["features"], list)
        for f in info["features"]:
            self.assertIsInstance(f, str)
        self.assertIn("session_rename", info["features"])
        self.assertEqual(info["default_channel"], "general")
        self.assertEqual(info["max_body_chars"], 128000)
        self.assertEqual(info["max_attachment_chars"], 256000)
        self.assertEqual(info["max_attachments"], 32)
        self.assertIs(info.get("allow_remote", False), False)  # informational field

    def test_instance_id(self):
        status, headers, payload = self.hub.get("/v1/hub-info")
        info = self.assertOk((status, headers, payload))
        self.assertRegex(info["instance_id"], INSTANCE_RE)
        self.assertEqual(headers.get("x-arc-instance"), info["instance_id"])
        # the header is on other JSON responses too, errors included
        _, h2, _ = self.hub.get("/v1/channels")
        self.assertEqual(h2.get("x-arc-instance"), info["instance_id"])
        _, h3, _ = self.hub.get("/v1/messages")  # 400
        self.assertEqual(h3.get("x-arc-instance"), info["instance_id"])

    def test_other_storage_has_other_instance(self):
        mine = self.assertOk(self.hub.get("/v1/hub-info"))["instance_id"]
        with Hub() as other:
            theirs = self.assertOk(other.get("/v1/hub-info"))["instance_id"]
        self.assertRegex(theirs, INSTANCE_RE)
        self.assertNotEqual(mine, theirs)


class RestartTests(HubCase):

    def test_instance_id_and_data_survive_restart(self):
        info = self.assertOk(self.hub.get("/v1/hub-info"))
        ch = self.channel()
        m = self.msg(channel=ch, body="persisted")
        self.hub.restart()
        status, headers, payload = self.hub.get("/v1/hub-info")
        info2 = self.assertOk((status, headers, payload))
        self.assertEqual(info2["instance_id"], info["instance_id"])
        self.assertEqual(headers.get("x-arc-instance"), info["instance_id"])
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch))
        self.assertEqual(rows, [m])


@arc_only
@unittest.skipUnless(shutil.which("strace"), "strace is not installed")
class DurabilityTests(unittest.TestCase):
    """Group commit (PROTOCOL §10.2): no answer leaves before the fsync()
    that makes what it reports durable, and a commit that cannot be synced
    is a 503 whose writes never happened. strace delays or fails the hub's
    fsync calls (a SIGKILL test could not show either: killed or not, the
    kernel keeps the page cache). The traced hub opens a file written by an
    earlier one, which needs no fsync, so only request commits are hit."""

    DELAY_S = 0.4

    def strace_hub(self, inject):
        plain = Hub().start()
        plain.stop_process()
        hub = Hub(["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fsync",
                   "-e", "inject=fsync:" + inject] + hub_command())
        hub.dir = plain.dir
        hub.start(storage=plain.storage)
        self.addCleanup(plain.cleanup)
        self.addCleanup(self.stop_traced, hub)
        return hub

    def stop_traced(self, hub):
        # SIGTERM goes to the hub itself (its pidfile names it), not to strace,
        # which then exits with it.
        try:
            with open(os.path.join(hub.dir, ".arc.pid")) as f:
                os.kill(json.load(f)["pid"], signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass
        hub.wait_exit()
        hub.stop_process()

    def test_answers_wait_for_the_commit_fsync(self):
        hub = self.strace_hub("delay_exit=%d" % int(self.DELAY_S * 1e6))
        woken = {}

        def wait():
            status, _, payload = hub.get("/v1/messages", http_timeout=30,
                                         channel="general", since_id=0, timeout=20)
            woken["t"], woken["rows"] = time.monotonic(), payload["result"]

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        t0 = time.monotonic()
        status, _, payload = hub.post("/v1/messages", {"from_agent": "a", "body": "x"})
        t_post = time.monotonic() - t0
        self.assertEqual(status, 201, payload)
        waiter.join(30)
        self.assertIn("t", woken, "the long-poll was not answered")
        self.assertEqual([m["id"] for m in woken["rows"]], [payload["result"]["id"]])
        # Both answers left only after the (delayed) fsync had returned.
        self.assertGreaterEqual(t_post, self.DELAY_S)
        self.assertGreaterEqual(woken["t"] - t0, self.DELAY_S)

    def test_failed_commit_is_503_and_undone(self):
        hub = self.strace_hub("error=EIO")
        status, _, payload = hub.post("/v1/messages",
                                      {"from_agent": "a", "body": "never stored"})
        self.assertEqual(status, 503, payload)
        self.assertIn("storage error: disk I/O error", payload["error"])
        status, _, payload = hub.get("/v1/messages", channel="general")
        self.assertEqual(status, 200, payload)
        self.assertNotIn("never stored", [m["body"] for m in payload["result"]])
        self.assertTrue(hub.alive())


# ── posting messages ────────────────────────────────────────────────────

class MessagePostTests(HubCase):

    def post(self, body):
        return self.hub.post("/v1/messages", body)

    def test_post_all_fields(self):
        ch = self.channel()
        body = {"from_agent": "alice", "channel": ch, "kind": "notice", "body": "hello",
                "attachments": [{"type": "text", "content": "note"}], "reply_to": 7,
                "thread_id": "th-1", "metadata": {"a": {"b": [1, True, None]}}}
        m = self.assertOk(self.post(body), 201)
        self.assertEqual(set(m), MESSAGE_FIELDS)
        self.assertIsInstance(m["id"], int)
        self.assertGreater(m["id"], 0)
        self.assertTimestamp(m["ts"])
        self.assertEqual(m["from_agent"], "alice")
        self.assertIsNone(m["to_agent"])
        self.assertEqual(m["channel"], ch)
        self.assertEqual(m["kind"], "notice")
        self.assertEqual(m["body"], "hello")
        self.assertEqual(m["attachments"], [{"type": "text", "content": "note"}])
        self.assertEqual(m["reply_to"], 7)
        self.assertEqual(m["thread_id"], "th-1")
        self.assertEqual(m["metadata"], {"a": {"b": [1, True, None]}})
        # read back identically
        self.assertEqual(self.assertOk(self.hub.get("/v1/messages", channel=ch)), [m])

    def test_defaults(self):
        m = self.msg(body="plain")
        self.assertEqual(m["kind"], "chat")
        self.assertEqual(m["channel"], "general")
        self.assertIsNone(m["to_agent"])
        self.assertEqual(m["attachments"], [])
        self.assertIsNone(m["reply_to"])
        self.assertIsNone(m["thread_id"])
        self.assertEqual(m["metadata"], {})

    def test_ids_increase(self):
        a = self.msg()
        b = self.msg()
        self.assertGreater(b["id"], a["id"])

    def test_kinds(self):
        for kind in KINDS:
            self.assertEqual(self.msg(kind=kind)["kind"], kind)
        self.assertEqual(self.msg(kind="NOTICE")["kind"], "notice")
        self.assertEqual(self.msg(kind="Task_Result")["kind"], "task_result")
        err = self.assertErr(self.post({"from_agent": "a", "body": "x", "kind": "gossip"}), 400)
        self.assertIn("kind", err)

    def test_from_agent_required(self):
        self.assertIn("from_agent", self.assertErr(self.post({"body": "x"}), 400))
        self.assertErr(self.post({"from_agent": "  ", "body": "x"}), 400)

    def test_body_or_attachments_required(self):
        self.assertErr(self.post({"from_agent": "a"}), 400)
        self.assertErr(self.post({"from_agent": "a", "body": ""}), 400)
        self.assertErr(self.post({"from_agent": "a", "body": "", "attachments": []}), 400)
        m = self.msg(body="", attachments=[{"type": "json", "content": {"k": 1}}])
        self.assertEqual(m["body"], "")
        self.assertEqual(m["attachments"], [{"type": "json", "content": {"k": 1}}])

    def test_attachments_validation(self):
        self.assertErr(self.post({"from_agent": "a", "body": "x", "attachments": "nope"}), 400)
        self.assertErr(self.post({"from_agent": "a", "body": "x", "attachments": {"type": "text"}}), 400)
        self.assertErr(self.post({"from_agent": "a", "body": "x", "attachments": ["text"]}), 400)
        err = self.assertErr(self.post({"from_agent": "a", "body": "x",
                                        "attachments": [{"type": "video", "content": "x"}]}), 400)
        self.assertIn("attachment", err)
        self.assertErr(self.post({"from_agent": "a", "body": "x", "attachments": [{"content": "x"}]}), 400)
        self.assertErr(self.post({"from_agent": "a", "body": "x", "attachments": [{"type": "text"}]}), 400)
        self.assertErr(self.post({"from_agent": "a", "body": "x", "attachments": [{"type": "file_ref"}]}), 400)
        self.assertErr(self.post({"from_agent": "a", "body": "x",
                                  "attachments": [{"type": "diff_ref", "path": "  "}]}), 400)

    def test_attachment_types(self):
        atts = [
            {"type": "text", "content": "t"},
            {"type": "json", "content": [1, {"x": None}]},
            {"type": "code", "content": "print(1)", "language": "python"},
            {"type": "code", "content": "x"},
            {"type": "file_ref", "path": "src/a.c", "description": "d", "start_line": 3, "end_line": 9},
            {"type": "diff_ref", "path": "src/b.c", "base": "abc", "head": "def"},
        ]
        m = self.msg(attachments=atts)
        self.assertEqual(m["attachments"], atts)
        self.assertEqual(m["attachments"][2]["language"], "python")
        self.assertNotIn("language", m["attachments"][3])

    def test_reply_to_validation(self):
        for bad in ("abc", [1], {"x": 1}):
            self.assertIn("reply_to", self.assertErr(
                self.post({"from_agent": "a", "body": "x", "reply_to": bad}), 400))
        self.assertEqual(self.msg(reply_to=12345)["reply_to"], 12345)
        self.assertIsNone(self.msg(reply_to=None)["reply_to"])

    def test_metadata_validation(self):
        for bad in ("x", [1], 5):
            self.assertIn("metadata", self.assertErr(
                self.post({"from_agent": "a", "body": "x", "metadata": bad}), 400))

    def test_missing_channel(self):
        err = self.assertErr(self.post({"from_agent": "a", "body": "x", "channel": uid("nochan")}), 400)
        self.assertIn("channel", err)

    def test_direct_message(self):
        m = self.msg(from_agent="alice", to_agent="bob", body="psst")
        self.assertEqual(m["to_agent"], "bob")
        self.assertEqual(m["channel"], "direct")
        # for DMs the channel is only a label and need not exist
        label = uid("label")
        m2 = self.msg(from_agent="alice", to_agent="bob", channel=label)
        self.assertEqual(m2["channel"], label)
        names = [c["name"] for c in self.assertOk(self.hub.get("/v1/channels"))]
        self.assertNotIn(label, names)

    def test_parent_task_id(self):
        err = self.assertErr(self.post({"from_agent": "a", "body": "x", "kind": "task",
                                        "parent_task_id": 987654321}), 400)
        self.assertIn("parent_task_id", err)
        self.assertErr(self.post({"from_agent": "a", "body": "x", "kind": "task",
                                  "parent_task_id": "abc"}), 400)
        parent = self.msg(kind="task", body="parent")
        child = self.msg(kind="task", body="child", parent_task_id=parent["id"])
        # parent_task_id is not echoed as a message field, but the task row has it
        self.assertEqual(set(child), MESSAGE_FIELDS)
        rows = self.assertOk(self.hub.get("/v1/tasks", parent_id=parent["id"]))
        self.assertEqual([t["task_id"] for t in rows], [child["id"]])

    def test_unicode_roundtrip(self):
        text = "héllo wörld € 😀 \u2028 \"quoted\" \\ \t"
        m = self.msg(body=text)
        self.assertEqual(m["body"], text)
        # same text sent with \\u escapes (surrogate pair for the emoji)
        raw = json.dumps({"from_agent": "a", "body": text}, ensure_ascii=True).encode()
        m2 = self.assertOk(self.hub.request("POST", "/v1/messages", raw_body=raw,
                                            headers={"Content-Type": "application/json"}), 201)
        self.assertEqual(m2["body"], text)
        rows = self.assertOk(self.hub.get("/v1/messages", channel="general", since_id=m["id"] - 1, limit=2))
        self.assertEqual([r["body"] for r in rows], [text, text])


class MessageLimitTests(HubCase):
    hub_args = ("--max-body-chars", "10", "--max-attachment-chars", "40", "--max-attachments", "2")

    def post(self, body):
        return self.hub.post("/v1/messages", body)

    def test_hub_info_reflects_limits(self):
        info = self.assertOk(self.hub.get("/v1/hub-info"))
        self.assertEqual(info["max_body_chars"], 10)
        self.assertEqual(info["max_attachment_chars"], 40)
        self.assertEqual(info["max_attachments"], 2)

    def test_too_many_attachments(self):
        att = {"type": "text", "content": "x"}
        self.assertOk(self.post({"from_agent": "a", "attachments": [att, att]}), 201)
        self.assertErr(self.post({"from_agent": "a", "attachments": [att, att, att]}), 400)

    def test_body_limit(self):
        self.assertOk(self.post({"from_agent": "a", "body": "x" * 10}), 201)
        self.assertIn("body", self.assertErr(self.post({"from_agent": "a", "body": "x" * 11}), 400))

    def test_body_limit_counts_characters(self):
        for ch in ("é", "€", "😀"):
            m = self.assertOk(self.post({"from_agent": "a", "body": ch * 10}), 201)
            self.assertEqual(m["body"], ch * 10)
            self.assertErr(self.post({"from_agent": "a", "body": ch * 11}), 400)
        # escaped form of 10 astral characters (20 surrogate escapes) is 10 characters too
        raw = json.dumps({"from_agent": "a", "body": "😀" * 10}).encode()
        self.assertOk(self.hub.request("POST", "/v1/messages", raw_body=raw), 201)

    def test_attachment_size_limit(self):
        # measured on the JSON encoding of content: a 38-char string encodes to 40 chars
        ok = {"type": "text", "content": "y" * 38}
        self.assertOk(self.post({"from_agent": "a", "attachments": [ok]}), 201)
        big = {"type": "text", "content": "y" * 39}
        self.assertErr(self.post({"from_agent": "a", "attachments": [big]}), 400)
        self.assertErr(self.post({"from_agent": "a", "attachments": [{"type": "code", "content": "z" * 100}]}), 400)


# ── reading messages ────────────────────────────────────────────────────

class MessageReadTests(HubCase):

    def raw_json(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.hub.port, timeout=10)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    @arc_only
    def test_read_renders_exactly_what_post_answered(self):
        # arc caches rendered messages (PROTOCOL §10.6): a page, read once
        # from rows and again from the cache, holds the bytes the POST
        # answered with, escapes and all.
        ch = self.channel()
        parent = self.msg(channel=ch, body="parent")
        body = {"from_agent": "caf\u00e9", "channel": ch, "kind": "task",
                "body": 'tab\there "quoted" back\\slash \u2603 \U0001F600 \x01',
                "attachments": [{"type": "json", "content": {"a": [1, 2.5, None]}}],
                "metadata": {"k": "v", "n": 1}, "thread_id": "th-" + ch,
                "reply_to": parent["id"]}
        status, raw = self.raw_json("POST", "/v1/messages", body)
        self.assertEqual(status, 201, raw)
        prefix = b'{"ok":true,"result":'
        self.assertTrue(raw.startswith(prefix) and raw.endswith(b"}"), raw)
        posted = raw[len(prefix):-1]
        mid = json.loads(posted)["id"]
        for _ in range(2):
            status, page = self.raw_json("GET", qs("/v1/messages", channel=ch))
            self.assertEqual(status, 200, page)
            self.assertTrue(page.endswith(b"," + posted + b"]}"), page)

    @arc_only
    def test_row_changed_by_another_process_is_read_fresh(self):
        import sqlite3
        ch = self.channel()
        m = self.msg(channel=ch, body="before")
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch))
        self.assertEqual(rows[-1]["metadata"], {})
        db = sqlite3.connect(self.hub.storage, timeout=10)
        try:
            db.execute("UPDATE messages SET metadata_json=? WHERE id=?",
                       ('{"changed":true}', m["id"]))
            db.commit()
        finally:
            db.close()
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch))
        self.assertEqual(rows[-1]["id"], m["id"])
        self.assertEqual(rows[-1]["metadata"], {"changed": True})

    def test_channel_or_thread_required(self):
        err = self.assertErr(self.hub.get("/v1/messages"), 400)
        self.assertIn("channel", err)

    def test_unknown_channel_404(self):
        self.assertErr(self.hub.get("/v1/messages", channel=uid("nochan")), 404)

    def test_dms_excluded_and_order(self):
        ch = self.channel()
        a = self.msg(channel=ch, body="one")
        self.msg(channel=ch, to_agent="bob", body="secret")
        b = self.msg(channel=ch, body="two")
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch))
        self.assertEqual([r["id"] for r in rows], [a["id"], b["id"]])
        for r in rows:
            self.assertEqual(set(r), MESSAGE_FIELDS)
            self.assertIsNone(r["to_agent"])

    def test_since_id_and_limit(self):
        ch = self.channel()
        ids = [self.msg(channel=ch, body="m%d" % i)["id"] for i in range(6)]
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch, since_id=ids[2]))
        self.assertEqual([r["id"] for r in rows], ids[3:])
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch, limit=2))
        self.assertEqual([r["id"] for r in rows], ids[:2])
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch, since_id=ids[1], limit=3))
        self.assertEqual([r["id"] for r in rows], ids[2:5])
        self.assertEqual(self.assertOk(self.hub.get("/v1/messages", channel=ch, since_id=ids[-1])), [])
        self.assertEqual(self.assertOk(self.hub.get("/v1/messages", channel=ch, since_id=0)),
                         self.assertOk(self.hub.get("/v1/messages", channel=ch)))

    def test_tail(self):
        ch = self.channel()
        ids = [self.msg(channel=ch, body="m%d" % i)["id"] for i in range(5)]
        self.msg(channel=ch, to_agent="zed", body="dm")  # never in the tail
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch, tail="true", limit=3))
        self.assertEqual([r["id"] for r in rows], ids[2:])
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch, tail="1", limit=100))
        self.assertEqual([r["id"] for r in rows], ids)
        # without tail the first rows come back
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch, limit=3))
        self.assertEqual([r["id"] for r in rows], ids[:3])
        # tail with since_id > 0 behaves like a normal since_id query
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch, tail="true", since_id=ids[0], limit=2))
        self.assertEqual([r["id"] for r in rows], ids[1:3])

    def test_query_validation(self):
        ch = self.channel()
        for params in ({"since_id": "-1"}, {"since_id": "abc"}, {"limit": "abc"},
                       {"limit": "0"}, {"limit": "-3"}, {"since_id": "1.5"}, {"timeout": "soon"}):
            self.assertErr(self.hub.get("/v1/messages", channel=ch, **params), 400)

    def test_thread_query(self):
        ch = self.channel()
        th = uid("th")
        a = self.msg(channel=ch, thread_id=th, body="a")
        self.msg(channel=ch, thread_id=th, to_agent="bob", body="dm in thread")
        b = self.msg(channel="general", thread_id=th, body="b")
        self.msg(channel=ch, body="no thread")
        rows = self.assertOk(self.hub.get("/v1/messages", thread_id=th))
        self.assertEqual([r["id"] for r in rows], [a["id"], b["id"]])
        rows = self.assertOk(self.hub.get("/v1/messages", thread_id=th, channel=ch))
        self.assertEqual([r["id"] for r in rows], [a["id"]])
        rows = self.assertOk(self.hub.get("/v1/messages", thread_id=th, since_id=a["id"]))
        self.assertEqual([r["id"] for r in rows], [b["id"]])
        self.assertEqual(self.assertOk(self.hub.get("/v1/messages", thread_id=uid("none"))), [])

    def test_limit_clamped_to_500(self):
        ch = self.channel()
        conn = http.client.HTTPConnection("127.0.0.1", self.hub.port, timeout=10)
        first = None
        try:
            for i in range(520):
                data = json.dumps({"from_agent": "bulk", "channel": ch, "body": "b%d" % i})
                conn.request("POST", "/v1/messages", body=data, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = json.loads(resp.read())
                self.assertEqual(resp.status, 201, payload)
                if first is None:
                    first = payload["result"]["id"]
        finally:
            conn.close()
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch, limit=100000))
        self.assertEqual(len(rows), 500)
        self.assertEqual(rows[0]["id"], first)
        self.assertEqual(rows[0]["body"], "b0")
        self.assertEqual(rows[-1]["body"], "b499")
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch, limit=100000, tail="true"))
        self.assertEqual(len(rows), 500)
        self.assertEqual(rows[-1]["body"], "b519")
        self.assertEqual(rows[0]["body"], "b20")
        self.assertEqual(len(self.assertOk(self.hub.get("/v1/messages", channel=ch))), 100)

    def test_long_poll_wakes_on_new_message(self):
        ch = self.channel()
        last = self.msg(channel=ch, body="before")["id"]
        result = {}

        def poll():
            result["resp"] = self.hub.get("/v1/messages", http_timeout=20, channel=ch, since_id=last,
                                          timeout="8")
            result["t"] = time.monotonic()
        t = threading.Thread(target=poll)
        start = time.monotonic()
        t.start()
        time.sleep(0.3)  # give the poller time to start waiting (not used for correctness)
        m = self.msg(channel=ch, body="after")
        t.join(15)
        self.assertFalse(t.is_alive())
        rows = self.assertOk(result["resp"])
        self.assertEqual([r["id"] for r in rows], [m["id"]])
        self.assertLess(result["t"] - start, 7.5)

    def test_long_poll_times_out_empty(self):
        ch = self.channel()
        start = time.monotonic()
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch, timeout="0.5"))
        self.assertEqual(rows, [])
        self.assertLess(time.monotonic() - start, 5)


# ── events ──────────────────────────────────────────────────────────────

class EventTests(HubCase):

    def test_agent_id_required(self):
        self.assertIn("agent_id", self.assertErr(self.hub.get("/v1/events"), 400))

    def test_unknown_channel(self):
        self.assertErr(self.hub.get("/v1/events", agent_id="a", channel=uid("nochan")), 404)

    def test_visibility(self):
        me, other = uid("me"), uid("other")
        ch = self.channel()
        start = self.msg(channel=ch, body="start")["id"]
        b1 = self.msg(from_agent=other, channel=ch, body="broadcast")
        dm_me = self.msg(from_agent=other, to_agent=me, body="for me")
        self.msg(from_agent=me, to_agent=other, body="for other")  # sent by me, not visible to me
        self.msg(from_agent=other, to_agent=uid("third"), body="for third")
        b2 = self.msg(from_agent=me, channel="general", body="mine")
        rows = self.assertOk(self.hub.get("/v1/events", agent_id=me, since_id=start))
        self.assertEqual([r["id"] for r in rows], [b1["id"], dm_me["id"], b2["id"]])
        rows = self.assertOk(self.hub.get("/v1/events", agent_id=me, since_id=start, exclude_self="true"))
        self.assertEqual([r["id"] for r in rows], [b1["id"], dm_me["id"]])
        rows = self.assertOk(self.hub.get("/v1/events", agent_id=me, since_id=start, exclude_self="yes"))
        self.assertEqual([r["id"] for r in rows], [b1["id"], dm_me["id"]])
        rows = self.assertOk(self.hub.get("/v1/events", agent_id=me, since_id=start, exclude_self="false"))
        self.assertEqual(len(rows), 3)
        rows = self.assertOk(self.hub.get("/v1/events", agent_id=me, since_id=start, limit=2))
        self.assertEqual([r["id"] for r in rows], [b1["id"], dm_me["id"]])

    def test_channel_and_thread_filters(self):
        me = uid("me")
        ch = self.channel()
        th = uid("th")
        start = self.msg(body="start")["id"]
        in_ch = self.msg(channel=ch, body="c")
        in_th = self.msg(channel="general", thread_id=th, body="t")
        both = self.msg(channel=ch, thread_id=th, body="ct")
        dm_th = self.msg(to_agent=me, thread_id=th, body="dm")
        rows = self.assertOk(self.hub.get("/v1/events", agent_id=me, since_id=start, channel=ch))
        self.assertEqual([r["id"] for r in rows], [in_ch["id"], both["id"]])
        rows = self.assertOk(self.hub.get("/v1/events", agent_id=me, since_id=start, thread_id=th))
        self.assertEqual([r["id"] for r in rows], [in_th["id"], both["id"], dm_th["id"]])
        rows = self.assertOk(self.hub.get("/v1/events", agent_id=me, since_id=start, thread_id=th, channel=ch))
        self.assertEqual([r["id"] for r in rows], [both["id"]])

    def test_query_validation(self):
        for params in ({"since_id": "-1"}, {"since_id": "x"}, {"limit": "0"}, {"limit": "y"}):
            self.assertErr(self.hub.get("/v1/events", agent_id="a", **params), 400)

    def test_long_poll_wakes_on_dm(self):
        me = uid("me")
        last = self.msg(body="before")["id"]
        result = {}

        def poll():
            result["resp"] = self.hub.get("/v1/events", http_timeout=20, agent_id=me, since_id=last,
                                          exclude_self="true", timeout="8")
        t = threading.Thread(target=poll)
        start = time.monotonic()
        t.start()
        time.sleep(0.3)  # let the poll begin (not used for correctness)
        m = self.msg(from_agent="x", to_agent=me, body="wake")
        t.join(15)
        rows = self.assertOk(result["resp"])
        self.assertEqual([r["id"] for r in rows], [m["id"]])
        self.assertLess(time.monotonic() - start, 7.5)


# ── bootstrap ───────────────────────────────────────────────────────────

class BootstrapTests(HubCase):

    def test_agent_id_required(self):
        self.assertErr(self.hub.get("/v1/bootstrap"), 400)

    def test_fields(self):
        me = uid("boot")
        s = self.session(me)
        self.msg(body="broadcast")
        dm = self.msg(from_agent="x", to_agent=me, body="mine")
        self.msg(from_agent="x", to_agent=uid("other"), body="not mine")  # higher id, invisible
        r = self.assertOk(self.hub.get("/v1/bootstrap", agent_id=me))
        self.assertEqual(set(r), {"agent_id", "session", "latest_visible_id", "live_agents", "default_channel"})
        self.assertEqual(r["agent_id"], me)
        self.assertEqual(r["session"]["session_id"], s["session_id"])
        self.assertEqual(set(r["session"]), SESSION_FIELDS)
        self.assertEqual(r["latest_visible_id"], dm["id"])
        self.assertIn(me, [a["agent_id"] for a in r["live_agents"]])
        self.assertEqual(r["default_channel"], "general")

    def test_unknown_agent(self):
        ghost = uid("ghost")
        latest = self.msg(body="x")["id"]
        r = self.assertOk(self.hub.get("/v1/bootstrap", agent_id=ghost))
        self.assertIsNone(r["session"])
        self.assertEqual(r["agent_id"], ghost)
        self.assertGreaterEqual(r["latest_visible_id"], latest)
        self.assertIsInstance(r["live_agents"], list)


# ── inbox ───────────────────────────────────────────────────────────────

class InboxTests(HubCase):

    def test_direct_messages_only(self):
        me = uid("in")
        self.msg(body="broadcast")
        a = self.msg(from_agent="x", to_agent=me, body="1")
        self.msg(from_agent="x", to_agent=uid("other"), body="other")
        b = self.msg(from_agent="y", to_agent=me, channel="label", body="2")
        self.msg(from_agent=me, to_agent="x", body="sent by me")
        rows = self.assertOk(self.hub.get("/v1/inbox/" + me))
        self.assertEqual([r["id"] for r in rows], [a["id"], b["id"]])
        for r in rows:
            self.assertEqual(set(r), MESSAGE_FIELDS)
            self.assertEqual(r["to_agent"], me)
        rows = self.assertOk(self.hub.get("/v1/inbox/" + me, since_id=a["id"]))
        self.assertEqual([r["id"] for r in rows], [b["id"]])
        self.assertEqual(self.assertOk(self.hub.get("/v1/inbox/" + uid("empty"))), [])

    def test_tail_and_limit(self):
        me = uid("in")
        ids = [self.msg(from_agent="x", to_agent=me, body=str(i))["id"] for i in range(5)]
        rows = self.assertOk(self.hub.get("/v1/inbox/" + me, limit=2))
        self.assertEqual([r["id"] for r in rows], ids[:2])
        rows = self.assertOk(self.hub.get("/v1/inbox/" + me, limit=2, tail="true"))
        self.assertEqual([r["id"] for r in rows], ids[3:])
        self.assertErr(self.hub.get("/v1/inbox/" + me, since_id="-4"), 400)
        self.assertErr(self.hub.get("/v1/inbox/" + me, limit="0"), 400)


# ── threads ─────────────────────────────────────────────────────────────

class ThreadTests(HubCase):

    def summary(self, th):
        rows = [t for t in self.assertOk(self.hub.get("/v1/threads")) if t["thread_id"] == th]
        self.assertEqual(len(rows), 1, "thread %s not listed exactly once" % th)
        self.assertEqual(set(rows[0]), THREAD_FIELDS)
        return rows[0]

    def test_unknown_thread(self):
        self.assertErr(self.hub.get("/v1/threads/" + uid("nothread")), 404)

    def test_waiting_thread_from_messages(self):
        ch = self.channel()
        th = uid("th")
        m1 = self.msg(channel=ch, thread_id=th, body="a")
        dm = self.msg(to_agent="bob", thread_id=th, body="dm")
        s = self.summary(th)
        self.assertEqual(s["status"], "waiting")
        self.assertEqual(s["channel"], ch)
        self.assertEqual(s["message_count"], 2)
        self.assertEqual(s["latest_message_id"], dm["id"])
        self.assertEqual(s["latest_message_ts"], dm["ts"])
        self.assertIsNone(s["root_task_id"])
        self.assertIsNone(s["latest_artifact_id"])
        self.assertEqual(s["total_task_count"], 0)
        self.assertEqual(s["open_task_count"], 0)
        self.assertEqual(s["active_claim_count"], 0)
        self.assertEqual(s["active_lock_count"], 0)
        d = self.assertOk(self.hub.get("/v1/threads/" + th))
        self.assertEqual(set(d), {"thread", "messages", "tasks", "claims", "locks"})
        self.assertEqual(d["thread"], s)
        self.assertEqual([m["id"] for m in d["messages"]], [m1["id"], dm["id"]])
        self.assertEqual(d["tasks"], [])
        self.assertEqual(d["claims"], [])
        self.assertEqual(d["locks"], [])

    def test_open_completed_and_counts(self):
        ch = self.channel()
        th = uid("th")
        root = self.msg(channel=ch, thread_id=th, kind="task", body="root")
        sub = self.msg(channel=ch, thread_id=th, kind="task", body="sub", parent_task_id=root["id"])
        art1 = self.msg(channel=ch, thread_id=th, kind="artifact", body="a1")
        art2 = self.msg(channel=ch, thread_id=th, kind="artifact", body="a2")
        s = self.summary(th)
        self.assertEqual(s["root_task_id"], root["id"])
        self.assertEqual(s["total_task_count"], 2)
        self.assertEqual(s["open_task_count"], 2)
        self.assertEqual(s["latest_artifact_id"], art2["id"])
        self.assertGreater(art2["id"], art1["id"])
        self.assertEqual(s["message_count"], 4)
        self.assertEqual(s["status"], "waiting")
        # an active claim makes the thread open
        self.assertOk(self.hub.post("/v1/claims", {"owner_agent_id": "w", "claim_key": uid("ck"),
                                                   "thread_id": th}), 201)
        s = self.summary(th)
        self.assertEqual(s["status"], "open")
        self.assertEqual(s["active_claim_count"], 1)
        # all tasks done -> completed (takes precedence over active claims)
        self.assertOk(self.hub.post("/v1/tasks/%d/complete" % sub["id"]))
        s = self.summary(th)
        self.assertEqual(s["open_task_count"], 0)
        self.assertEqual(s["status"], "completed")
        d = self.assertOk(self.hub.get("/v1/threads/" + th))
        self.assertEqual(sorted(t["task_id"] for t in d["tasks"]), [root["id"], sub["id"]])
        self.assertEqual(len(d["claims"]), 1)

    def test_lock_with_thread_metadata_counted(self):
        th = uid("th")
        self.msg(thread_id=th, body="seed")
        path = "src/%s.c" % uid("f")
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": "w", "file_path": path,
                                                  "metadata": {"thread_id": th}}), 201)
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": "w", "file_path": path + ".other"}), 201)
        s = self.summary(th)
        self.assertEqual(s["active_lock_count"], 1)
        self.assertEqual(s["status"], "open")
        d = self.assertOk(self.hub.get("/v1/threads/" + th))
        self.assertEqual([l["file_path"] for l in d["locks"]], [path])
        self.assertOk(self.hub.post("/v1/locks/release", {"agent_id": "w", "file_path": path}))
        s = self.summary(th)
        self.assertEqual(s["active_lock_count"], 0)
        self.assertEqual(s["status"], "waiting")

    def test_thread_discovered_from_claim(self):
        th = uid("th")
        self.assertOk(self.hub.post("/v1/claims", {"owner_agent_id": "w", "claim_key": uid("ck"),
                                                   "thread_id": th}), 201)
        s = self.summary(th)
        self.assertEqual(s["message_count"], 0)
        self.assertIsNone(s["latest_message_id"])
        self.assertEqual(s["active_claim_count"], 1)
        self.assertEqual(s["status"], "open")
        self.assertOk(self.hub.get("/v1/threads/" + th))


# ── claims ──────────────────────────────────────────────────────────────

class ClaimTests(HubCase):

    def acquire(self, **body):
        return self.hub.post("/v1/claims", body)

    def test_acquire_contend_refresh_release(self):
        key, th = uid("ck"), uid("th")
        code, h, p = self.acquire(owner_agent_id="alice", claim_key=key, thread_id=th,
                                  ttl_sec=60, metadata={"why": "x"})
        c = self.assertOk((code, h, p), 201)
        self.assertIs(p["acquired"], True)
        self.assertEqual(set(c), CLAIM_FIELDS)
        self.assertEqual(c["claim_key"], key)
        self.assertEqual(c["owner_agent_id"], "alice")
        self.assertEqual(c["thread_id"], th)
        self.assertIsNone(c["task_message_id"])
        self.assertIsNone(c["released_at"])
        self.assertEqual(c["metadata"], {"why": "x"})
        self.assertTimestamp(c["claimed_at"])
        self.assertTimestamp(c["expires_at"])
        self.assertGreater(parse_ts(c["expires_at"]), parse_ts(c["claimed_at"]))
        # same owner re-acquire refreshes
        code, h, p = self.acquire(owner_agent_id="alice", claim_key=key, ttl_sec=600)
        c2 = self.assertOk((code, h, p), 201)
        self.assertIs(p["acquired"], True)
        self.assertEqual(c2["owner_agent_id"], "alice")
        self.assertGreater(parse_ts(c2["expires_at"]), parse_ts(c["expires_at"]))
        # other owner is denied and sees the holder
        code, h, p = self.acquire(owner_agent_id="bob", claim_key=key)
        c3 = self.assertOk((code, h, p), 200)
        self.assertIs(p["acquired"], False)
        self.assertEqual(c3["owner_agent_id"], "alice")
        self.assertEqual(c3["claim_key"], key)
        # refresh
        code, h, p = self.hub.post("/v1/claims/refresh", {"claim_key": key, "owner_agent_id": "alice",
                                                          "ttl_sec": 30})
        r = self.assertOk((code, h, p), 200)
        self.assertIs(p["acquired"], True)
        self.assertEqual(r["owner_agent_id"], "alice")
        self.assertLess(parse_ts(r["expires_at"]), parse_ts(c2["expires_at"]))
        self.assertErr(self.hub.post("/v1/claims/refresh", {"claim_key": key, "owner_agent_id": "bob"}), 404)
        self.assertErr(self.hub.post("/v1/claims/refresh", {"claim_key": uid("none"),
                                                            "owner_agent_id": "alice"}), 404)
        # release
        self.assertErr(self.hub.post("/v1/claims/release", {"claim_key": key, "agent_id": "bob"}), 404)
        rel = self.assertOk(self.hub.post("/v1/claims/release", {"claim_key": key, "agent_id": "alice"}))
        self.assertEqual(rel["claim_key"], key)
        self.assertTimestamp(rel["released_at"])
        self.assertErr(self.hub.post("/v1/claims/release", {"claim_key": key, "agent_id": "alice"}), 404)
        self.assertErr(self.hub.post("/v1/claims/refresh", {"claim_key": key, "owner_agent_id": "alice"}), 404)
        # released claims can be taken by someone else
        code, h, p = self.acquire(owner_agent_id="bob", claim_key=key)
        c4 = self.assertOk((code, h, p), 201)
        self.assertIs(p["acquired"], True)
        self.assertEqual(c4["owner_agent_id"], "bob")
        self.assertIsNone(c4["released_at"])

    def test_claim_key_from_task(self):
        task = self.msg(kind="task", body="do it")
        code, h, p = self.acquire(owner_agent_id="w", task_message_id=task["id"])
        c = self.assertOk((code, h, p), 201)
        self.assertEqual(c["claim_key"], "task-%d" % task["id"])
        self.assertEqual(c["task_message_id"], task["id"])

    def test_validation(self):
        self.assertIn("claim_key", self.assertErr(self.acquire(owner_agent_id="w"), 400))
        self.assertErr(self.acquire(claim_key=uid("ck")), 400)
        self.assertErr(self.acquire(owner_agent_id="w", claim_key=uid("ck"), ttl_sec=4), 400)
        self.assertErr(self.acquire(owner_agent_id="w", claim_key=uid("ck"), ttl_sec=0), 400)
        self.assertErr(self.acquire(owner_agent_id="w", claim_key=uid("ck"), ttl_sec="long"), 400)
        self.assertErr(self.acquire(owner_agent_id="w", claim_key=uid("ck"), metadata="x"), 400)
        self.assertErr(self.acquire(owner_agent_id="w", task_message_id="abc"), 400)
        self.assertOk(self.acquire(owner_agent_id="w", claim_key=uid("ck"), ttl_sec=5), 201)
        self.assertErr(self.hub.post("/v1/claims/refresh", {"claim_key": "x"}), 400)
        self.assertErr(self.hub.post("/v1/claims/release", {"claim_key": "x"}), 400)
        key = uid("ck")
        self.assertOk(self.acquire(owner_agent_id="w", claim_key=key), 201)
        self.assertErr(self.hub.post("/v1/claims/refresh", {"claim_key": key, "owner_agent_id": "w",
                                                            "ttl_sec": 1}), 400)

    def test_list(self):
        th = uid("th")
        k1, k2, k3 = uid("ck"), uid("ck"), uid("ck")
        self.assertOk(self.acquire(owner_agent_id="a", claim_key=k1, thread_id=th), 201)
        self.assertOk(self.acquire(owner_agent_id="a", claim_key=k2, thread_id=th), 201)
        self.assertOk(self.acquire(owner_agent_id="a", claim_key=k3), 201)
        self.assertOk(self.hub.post("/v1/claims/release", {"claim_key": k2, "agent_id": "a"}))
        rows = self.assertOk(self.hub.get("/v1/claims", thread_id=th))
        self.assertEqual(sorted(r["claim_key"] for r in rows), sorted([k1, k2]))
        for r in rows:
            self.assertEqual(set(r), CLAIM_FIELDS)
        rows = self.assertOk(self.hub.get("/v1/claims", thread_id=th, active_only="true"))
        self.assertEqual([r["claim_key"] for r in rows], [k1])
        keys = [r["claim_key"] for r in self.assertOk(self.hub.get("/v1/claims"))]
        self.assertTrue({k1, k2, k3} <= set(keys))
        keys = [r["claim_key"] for r in self.assertOk(self.hub.get("/v1/claims", active_only="1"))]
        self.assertIn(k1, keys)
        self.assertIn(k3, keys)
        self.assertNotIn(k2, keys)


# ── locks ───────────────────────────────────────────────────────────────

class LockTests(HubCase):

    def test_acquire_contend_refresh_release(self):
        path = "src/%s.c" % uid("f")
        code, h, p = self.hub.post("/v1/locks", {"agent_id": "alice", "file_path": path, "ttl_sec": 60,
                                                 "metadata": {"m": 1}})
        lk = self.assertOk((code, h, p), 201)
        self.assertIs(p["acquired"], True)
        self.assertEqual(set(lk), LOCK_FIELDS)
        self.assertEqual(lk["file_path"], path)
        self.assertEqual(lk["agent_id"], "alice")
        self.assertEqual(lk["metadata"], {"m": 1})
        self.assertIsNone(lk["released_at"])
        self.assertTimestamp(lk["locked_at"])
        self.assertTimestamp(lk["expires_at"])
        code, h, p = self.hub.post("/v1/locks", {"agent_id": "alice", "file_path": path, "ttl_sec": 600})
        lk2 = self.assertOk((code, h, p), 201)
        self.assertIs(p["acquired"], True)
        self.assertGreater(parse_ts(lk2["expires_at"]), parse_ts(lk["expires_at"]))
        code, h, p = self.hub.post("/v1/locks", {"agent_id": "bob", "file_path": path})
        lk3 = self.assertOk((code, h, p), 200)
        self.assertIs(p["acquired"], False)
        self.assertEqual(lk3["agent_id"], "alice")
        code, h, p = self.hub.post("/v1/locks/refresh", {"agent_id": "alice", "file_path": path, "ttl_sec": 30})
        r = self.assertOk((code, h, p))
        self.assertIs(p["acquired"], True)
        self.assertEqual(r["agent_id"], "alice")
        self.assertErr(self.hub.post("/v1/locks/refresh", {"agent_id": "bob", "file_path": path}), 404)
        self.assertErr(self.hub.post("/v1/locks/refresh", {"agent_id": "alice", "file_path": path + "x"}), 404)
        self.assertErr(self.hub.post("/v1/locks/release", {"agent_id": "bob", "file_path": path}), 404)
        rel = self.assertOk(self.hub.post("/v1/locks/release", {"agent_id": "alice", "file_path": path}))
        self.assertTimestamp(rel["released_at"])
        self.assertErr(self.hub.post("/v1/locks/release", {"agent_id": "alice", "file_path": path}), 404)
        code, h, p = self.hub.post("/v1/locks", {"agent_id": "bob", "file_path": path})
        self.assertEqual(self.assertOk((code, h, p), 201)["agent_id"], "bob")

    def test_validation(self):
        self.assertErr(self.hub.post("/v1/locks", {"agent_id": "a"}), 400)
        self.assertErr(self.hub.post("/v1/locks", {"file_path": "x"}), 400)
        self.assertErr(self.hub.post("/v1/locks", {"agent_id": "a", "file_path": uid(), "ttl_sec": 4}), 400)
        self.assertErr(self.hub.post("/v1/locks", {"agent_id": "a", "file_path": uid(), "metadata": 1}), 400)
        self.assertErr(self.hub.post("/v1/locks/refresh", {"agent_id": "a"}), 400)
        self.assertErr(self.hub.post("/v1/locks/release", {"file_path": "x"}), 400)

    def test_list(self):
        agent = uid("ag")
        p1, p2 = uid("p1"), uid("p2")
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": agent, "file_path": p1}), 201)
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": agent, "file_path": p2}), 201)
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": "someone", "file_path": uid("p3")}), 201)
        self.assertOk(self.hub.post("/v1/locks/release", {"agent_id": agent, "file_path": p2}))
        rows = self.assertOk(self.hub.get("/v1/locks", agent_id=agent))
        self.assertEqual(sorted(r["file_path"] for r in rows), sorted([p1, p2]))
        for r in rows:
            self.assertEqual(set(r), LOCK_FIELDS)
        rows = self.assertOk(self.hub.get("/v1/locks", agent_id=agent, active_only="true"))
        self.assertEqual([r["file_path"] for r in rows], [p1])
        everything = [r["file_path"] for r in self.assertOk(self.hub.get("/v1/locks"))]
        self.assertIn(p2, everything)
        active = [r["file_path"] for r in self.assertOk(self.hub.get("/v1/locks", active_only="yes"))]
        self.assertNotIn(p2, active)
        self.assertIn(p1, active)


# ── tasks ───────────────────────────────────────────────────────────────

class TaskTests(HubCase):

    def complete(self, task_id):
        return self.hub.post("/v1/tasks/%s/complete" % task_id, {})

    def test_task_rows_created(self):
        ch = self.channel()
        th = uid("th")
        t = self.msg(channel=ch, thread_id=th, kind="task", body="t")
        r = self.msg(channel=ch, kind="task_request", to_agent="w", body="r")
        self.msg(channel=ch, kind="chat", body="c")
        self.msg(channel=ch, kind="notice", body="n")
        rows = self.assertOk(self.hub.get("/v1/tasks", channel=ch))
        self.assertEqual([x["task_id"] for x in rows], [t["id"], r["id"]])
        row = rows[0]
        # arc adds the arc:task_deps fields (PROTOCOL §14).
        self.assertEqual(set(row), TASK_FIELDS | (set() if REF else {"blocked_by", "claimable"}))
        self.assertIsNone(row["parent_task_id"])
        self.assertEqual(row["channel"], ch)
        self.assertEqual(row["thread_id"], th)
        self.assertEqual(row["status"], "open")
        self.assertTimestamp(row["created_at"])
        self.assertIsNone(row["completed_at"])

    def test_filters(self):
        ch = self.channel()
        th = uid("th")
        p = self.msg(channel=ch, kind="task", body="p")
        c1 = self.msg(channel=ch, kind="task", body="c1", parent_task_id=p["id"], thread_id=th)
        c2 = self.msg(channel=ch, kind="task", body="c2", parent_task_id=p["id"])
        self.assertOk(self.complete(c2["id"]))
        ids = lambda rows: [x["task_id"] for x in rows]
        self.assertEqual(ids(self.assertOk(self.hub.get("/v1/tasks", parent_id=p["id"]))), [c1["id"], c2["id"]])
        self.assertEqual(ids(self.assertOk(self.hub.get("/v1/tasks", channel=ch, status="open"))),
                         [p["id"], c1["id"]])
        self.assertEqual(ids(self.assertOk(self.hub.get("/v1/tasks", channel=ch, status="done"))), [c2["id"]])
        self.assertEqual(ids(self.assertOk(self.hub.get("/v1/tasks", thread_id=th))), [c1["id"]])
        self.assertEqual(ids(self.assertOk(self.hub.get("/v1/tasks", parent_id=p["id"], status="done"))),
                         [c2["id"]])
        self.assertErr(self.hub.get("/v1/tasks", status="finished"), 400)
        self.assertErr(self.hub.get("/v1/tasks", parent_id="abc"), 400)
        self.assertEqual(self.assertOk(self.hub.get("/v1/tasks", channel=uid("none"))), [])

    def test_complete(self):
        t = self.msg(kind="task", body="t")
        code, h, p = self.complete(t["id"])
        row = self.assertOk((code, h, p))
        self.assertEqual(row["task_id"], t["id"])
        self.assertEqual(row["status"], "done")
        self.assertTimestamp(row["completed_at"])
        self.assertNotIn("parent_completed", p)
        again = self.assertOk(self.complete(t["id"]))
        self.assertEqual(again["status"], "done")
        self.assertErr(self.complete(987654321), 404)
        self.assertErr(self.complete("abc"), 404)
        # a plain chat message is not a task
        chat = self.msg(body="not a task")
        self.assertErr(self.complete(chat["id"]), 404)

    def test_rollup(self):
        ch = self.channel()
        th = uid("th")
        parent = self.msg(channel=ch, thread_id=th, kind="task", body="parent")
        kids = [self.msg(channel=ch, kind="task", body="k%d" % i, parent_task_id=parent["id"])
                for i in range(2)]
        code, h, p = self.complete(kids[0]["id"])
        self.assertOk((code, h, p))
        self.assertNotIn("parent_completed", p)
        self.assertEqual(self.assertOk(self.hub.get("/v1/tasks", channel=ch, status="open"))[0]["task_id"],
                         parent["id"])
        code, h, p = self.complete(kids[1]["id"])
        self.assertEqual(self.assertOk((code, h, p))["task_id"], kids[1]["id"])
        self.assertIs(p.get("parent_completed"), True)
        rows = self.assertOk(self.hub.get("/v1/tasks", channel=ch))
        self.assertEqual({x["task_id"]: x["status"] for x in rows},
                         {parent["id"]: "done", kids[0]["id"]: "done", kids[1]["id"]: "done"})
        notices = [m for m in self.assertOk(self.hub.get("/v1/messages", channel=ch, since_id=kids[1]["id"]))
                   if m["metadata"].get("auto_rollup")]
        self.assertEqual(len(notices), 1)
        n = notices[0]
        self.assertEqual(n["from_agent"], "system")
        self.assertEqual(n["kind"], "notice")
        self.assertEqual(n["channel"], ch)
        self.assertEqual(n["thread_id"], th)
        self.assertEqual(n["reply_to"], parent["id"])
        self.assertIs(n["metadata"]["auto_rollup"], True)
        self.assertEqual(n["metadata"]["parent_task_id"], parent["id"])
        self.assertTrue(n["body"])

    def test_rollup_one_level_or_every_level(self):
        """v1 rolls up one level; arc (arc:deep_rollup, PROTOCOL §13)
        goes on up the tree."""
        ch = self.channel()
        grand = self.msg(channel=ch, kind="task", body="grand")
        parent = self.msg(channel=ch, kind="task", body="parent", parent_task_id=grand["id"])
        child = self.msg(channel=ch, kind="task", body="child", parent_task_id=parent["id"])
        code, h, p = self.complete(child["id"])
        self.assertOk((code, h, p))
        self.assertIs(p.get("parent_completed"), True)
        status = {x["task_id"]: x["status"] for x in self.assertOk(self.hub.get("/v1/tasks", channel=ch))}
        self.assertEqual(status, {grand["id"]: "open" if REF else "done", parent["id"]: "done",
                                  child["id"]: "done"})
        notices = [m for m in self.assertOk(self.hub.get("/v1/messages", channel=ch))
                   if m["metadata"].get("auto_rollup")]
        self.assertEqual([n["metadata"]["parent_task_id"] for n in notices],
                         [parent["id"]] if REF else [parent["id"], grand["id"]])


# ── RPC ─────────────────────────────────────────────────────────────────

class RpcTests(HubCase):

    def test_task_result_completes_request(self):
        ch = self.channel()
        req = self.msg(from_agent="client", channel=ch, kind="task_request", body="compute")
        res = self.msg(from_agent="worker", channel=ch, kind="task_result", body="42",
                       reply_to=req["id"], metadata={"extra": 1})
        self.assertEqual(res["metadata"], {"extra": 1, "task_completed": req["id"]})
        rows = self.assertOk(self.hub.get("/v1/messages", channel=ch))
        stored = [r for r in rows if r["id"] == res["id"]][0]
        self.assertEqual(stored["metadata"], {"extra": 1, "task_completed": req["id"]})
        self.assertEqual(stored, res)
        task = self.assertOk(self.hub.get("/v1/tasks", channel=ch))[0]
        self.assertEqual(task["task_id"], req["id"])
        self.assertEqual(task["status"], "done")
        # a second result for the already-done request is not annotated
        again = self.msg(from_agent="worker", channel=ch, kind="task_result", body="43", reply_to=req["id"])
        self.assertNotIn("task_completed", again["metadata"])

    def test_direct_rpc(self):
        req = self.msg(from_agent="client", to_agent="worker", kind="task_request", body="q")
        res = self.msg(from_agent="worker", to_agent="client", kind="task_result", body="a", reply_to=req["id"])
        self.assertEqual(res["metadata"].get("task_completed"), req["id"])
        inbox = self.assertOk(self.hub.get("/v1/inbox/client", since_id=req["id"]))
        self.assertEqual([m["metadata"].get("task_completed") for m in inbox if m["id"] == res["id"]],
                         [req["id"]])

    def test_result_for_non_request_not_annotated(self):
        ch = self.channel()
        task = self.msg(channel=ch, kind="task", body="plain task")
        chat = self.msg(channel=ch, body="chat")
        r1 = self.msg(channel=ch, kind="task_result", body="r", reply_to=task["id"])
        r2 = self.msg(channel=ch, kind="task_result", body="r", reply_to=chat["id"])
        r3 = self.msg(channel=ch, kind="task_result", body="r")
        for r in (r1, r2, r3):
            self.assertNotIn("task_completed", r["metadata"])
        self.assertEqual(self.assertOk(self.hub.get("/v1/tasks", channel=ch))[0]["status"], "open")


# ── TTL expiry ──────────────────────────────────────────────────────────

class LeaseExpiryTests(HubCase):

    def test_claim_and_lock_expire(self):
        key, path = uid("ck"), uid("path")
        self.assertOk(self.hub.post("/v1/claims", {"owner_agent_id": "a", "claim_key": key, "ttl_sec": 5}), 201)
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": "a", "file_path": path, "ttl_sec": 5}), 201)
        active_claims = lambda: [c["claim_key"] for c in
                                 self.assertOk(self.hub.get("/v1/claims", active_only="true"))]
        active_locks = lambda: [l["file_path"] for l in
                                self.assertOk(self.hub.get("/v1/locks", active_only="true"))]
        self.assertIn(key, active_claims())
        self.assertIn(path, active_locks())
        wait_for(lambda: key not in active_claims() and path not in active_locks(),
                 timeout=10, interval=0.1, msg="5 s leases still active after 10 s")
        # expired leases cannot be refreshed or released, but can be re-acquired by anyone
        self.assertErr(self.hub.post("/v1/claims/refresh", {"claim_key": key, "owner_agent_id": "a"}), 404)
        self.assertErr(self.hub.post("/v1/locks/refresh", {"file_path": path, "agent_id": "a"}), 404)
        self.assertErr(self.hub.post("/v1/claims/release", {"claim_key": key, "agent_id": "a"}), 404)
        self.assertErr(self.hub.post("/v1/locks/release", {"file_path": path, "agent_id": "a"}), 404)
        code, h, p = self.hub.post("/v1/claims", {"owner_agent_id": "b", "claim_key": key})
        self.assertEqual(self.assertOk((code, h, p), 201)["owner_agent_id"], "b")
        self.assertIs(p["acquired"], True)
        code, h, p = self.hub.post("/v1/locks", {"agent_id": "b", "file_path": path})
        self.assertEqual(self.assertOk((code, h, p), 201)["agent_id"], "b")


@arc_only  # the reference hub has no --presence-ttl flag (fixed 120 s TTL)
class PresenceExpiryTests(HubCase):
    hub_args = ("--presence-ttl", "5")

    def test_idle_session_expires_and_work_is_recovered(self):
        idle, poller = uid("idle"), uid("poller")
        self.session(idle)
        self.session(poller)
        quiet = self.channel()
        th = uid("th")
        start = self.msg(from_agent="seed", body="seed")["id"]
        key = uid("ck")
        path = uid("path")
        self.assertOk(self.hub.post("/v1/claims", {"owner_agent_id": idle, "claim_key": key,
                                                   "thread_id": th, "ttl_sec": 300}), 201)
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": idle, "file_path": path, "ttl_sec": 300}), 201)

        # the poller stays present only through an active long-poll on a quiet channel
        result = {}

        def long_poll():
            result["resp"] = self.hub.get("/v1/events", http_timeout=30, agent_id=poller, channel=quiet,
                                          timeout="10")
        t = threading.Thread(target=long_poll)
        t.start()
        try:
            # Watch the leases first (listing claims/locks does not prune sessions), so
            # the recovery path is exercised by the hub's own prune tick.
            active_claims = lambda: [c["claim_key"] for c in
                                     self.assertOk(self.hub.get("/v1/claims", active_only="true"))]
            active_locks = lambda: [l["file_path"] for l in
                                    self.assertOk(self.hub.get("/v1/locks", active_only="true"))]
            wait_for(lambda: key not in active_claims() and path not in active_locks(),
                     timeout=12, interval=0.2,
                     msg="idle agent's claim/lock not released with --presence-ttl 5")
            claim = [c for c in self.assertOk(self.hub.get("/v1/claims")) if c["claim_key"] == key][0]
            self.assertIsNotNone(claim["released_at"])
            lock = [l for l in self.assertOk(self.hub.get("/v1/locks")) if l["file_path"] == path][0]
            self.assertIsNotNone(lock["released_at"])
            live = [a["agent_id"] for a in self.assertOk(self.hub.get("/v1/agents"))]
            self.assertNotIn(idle, live)
            self.assertIn(poller, live, "long-polling agent expired (presence must be kept alive)")
            rows = self.assertOk(self.hub.get("/v1/events", agent_id="obs", since_id=start))
            notices = [m for m in rows if m["from_agent"] == "system" and m["metadata"].get("recovery")]
            self.assertEqual(len(notices), 2, notices)
            for n in notices:
                self.assertEqual(n["kind"], "notice")
                self.assertIs(n["metadata"]["recovery"], True)
                self.assertEqual(n["metadata"]["stale_agent_id"], idle)
            claim_notices = [n for n in notices if n["metadata"].get("claim_key") == key]
            self.assertEqual(len(claim_notices), 1)
            self.assertEqual(claim_notices[0]["thread_id"], th)
            self.assertEqual(len([n for n in notices if n["metadata"].get("file_path") == path]), 1)
            # the expired agent can register again without replace
            self.session(idle)
        finally:
            t.join(20)
        self.assertOk(result["resp"])


# ── admin: shutdown and network ─────────────────────────────────────────

class ShutdownControlTests(HubCase):

    def test_status_initiate_cancel(self):
        self.assertIsNone(self.assertOk(self.hub.get("/v1/shutdown")))
        start = self.msg(body="marker")["id"]
        r = self.assertOk(self.hub.post("/v1/shutdown", {"delay_sec": 60}))
        try:
            self.assertEqual(r.get("delay_sec"), 60)
            st = self.assertOk(self.hub.get("/v1/shutdown"))
            self.assertEqual(st["delay_sec"], 60)
            self.assertIsInstance(st["remaining_sec"], int)
            self.assertTrue(50 <= st["remaining_sec"] <= 60, st)
            self.assertErr(self.hub.post("/v1/shutdown", {"delay_sec": 30}), 400)
            notices = [m for m in self.assertOk(self.hub.get("/v1/messages", channel="general", since_id=start))
                       if m["from_agent"] == "system" and m["metadata"].get("shutdown")]
            self.assertEqual(len(notices), 1)
            self.assertEqual(notices[0]["kind"], "notice")
        finally:
            c = self.assertOk(self.hub.post("/v1/shutdown/cancel", {}))
        self.assertIsInstance(c, dict)
        self.assertIsNone(self.assertOk(self.hub.get("/v1/shutdown")))
        self.assertErr(self.hub.post("/v1/shutdown/cancel", {}), 400)
        self.assertTrue(self.hub.alive())

    def test_default_delay(self):
        self.assertOk(self.hub.post("/v1/shutdown", {}))
        try:
            st = self.assertOk(self.hub.get("/v1/shutdown"))
            self.assertEqual(st["delay_sec"], 60)
        finally:
            self.assertOk(self.hub.post("/v1/shutdown/cancel", {}))

    def test_delay_validation(self):
        for bad in (-1, 3601, "soon"):
            self.assertErr(self.hub.post("/v1/shutdown", {"delay_sec": bad}), 400)
        self.assertIsNone(self.assertOk(self.hub.get("/v1/shutdown")))

    def test_network_toggle(self):
        self.assertErr(self.hub.post("/v1/network", {"allow_remote": True}), 400)
        r = self.assertOk(self.hub.post("/v1/network", {"allow_remote": False}))
        self.assertIs(r["allow_remote"], False)
        self.assertEqual(r["listen_host"], "127.0.0.1")
        self.assertIs(self.assertOk(self.hub.get("/v1/hub-info")).get("allow_remote", False), False)

    def test_unknown_paths(self):
        for method, path in (("GET", "/v1/nope"), ("GET", "/v2/channels"), ("POST", "/v1/nope"),
                             ("DELETE", "/v1/channels"), ("GET", "/v1/tasks/1/complete"),
                             ("POST", "/v1/hub-info")):
            code, h, p = self.hub.request(method, path, body={} if method == "POST" else None)
            self.assertErr((code, h, p), 404)


class ShutdownNowTests(unittest.TestCase):

    def test_delay_zero_exits(self):
        hub = Hub().start()
        try:
            code, h, p = hub.post("/v1/shutdown", {"delay_sec": 0})
            self.assertEqual(code, 200, p)
            self.assertIs(p["ok"], True)
            rc = hub.wait_exit(10)
            self.assertIsNotNone(rc, "hub still running 10 s after shutdown with delay_sec 0")
            # the final notice was persisted
            hub.restart()
            code, h, p = hub.get("/v1/messages", channel="general")
            self.assertEqual(code, 200)
            self.assertTrue([m for m in p["result"]
                             if m["from_agent"] == "system" and m["metadata"].get("shutdown")])
        finally:
            hub.stop()


# ── several hubs on one storage file ────────────────────────────────────

class SharedStorageTests(HubCase):

    def test_second_hub_same_storage(self):
        with Hub().start(storage=self.hub.storage) as other:
            i1 = self.assertOk(self.hub.get("/v1/hub-info"))["instance_id"]
            i2 = self.assertOk(other.get("/v1/hub-info"))["instance_id"]
            self.assertEqual(i1, i2)
            ch = self.channel()
            m1 = self.msg(channel=ch, body="from hub one")
            self.assertEqual(self.assertOk(other.get("/v1/messages", channel=ch)), [m1])
            m2 = self.assertOk(other.post("/v1/messages", {"from_agent": "b", "channel": ch,
                                                           "body": "from hub two"}), 201)
            self.assertGreater(m2["id"], m1["id"])
            self.assertEqual(self.assertOk(self.hub.get("/v1/messages", channel=ch)), [m1, m2])
            # sessions are shared state too
            agent = uid("shared")
            self.session(agent)
            self.assertErr(other.post("/v1/sessions", {"agent_id": agent}), 409)


@unittest.skipUnless(reference_py(), "the reference's arc.py is not here (set ARC_REF_PY)")
class ReferenceStorageTests(HubCase):
    """A storage file written by the reference hub is served by the hub under test."""

    @staticmethod
    def writer_cmd():
        return [sys.executable, reference_py()]

    @staticmethod
    def reader_cmd():
        return None   # the hub under test

    @classmethod
    def setUpClass(cls):
        unittest.TestCase.setUpClass()
        cls.hub = None
        ref = Hub(cmd=cls.writer_cmd()).start()
        try:
            cls.ref_info = ref.get("/v1/hub-info")[2]["result"]
            post = lambda path, body: ref.post(path, body)[2]["result"]
            post("/v1/channels", {"name": "compat", "created_by": "ref", "metadata": {"x": 1}})
            cls.ref_session = post("/v1/sessions", {"agent_id": "compat-agent", "capabilities": ["c"]})
            cls.task = post("/v1/messages", {"from_agent": "ref", "channel": "compat", "kind": "task",
                                             "body": "task", "thread_id": "compat-th"})
            cls.msgs = [cls.task]
            cls.msgs.append(post("/v1/messages", {"from_agent": "ref", "channel": "compat", "body": "héllo 😀",
                                                  "attachments": [{"type": "code", "content": "x",
                                                                   "language": "c"}],
                                                  "thread_id": "compat-th", "metadata": {"k": [1]}}))
            cls.dm = post("/v1/messages", {"from_agent": "ref", "to_agent": "compat-agent", "body": "dm"})
            cls.claim = post("/v1/claims", {"owner_agent_id": "ref", "claim_key": "compat-claim",
                                            "thread_id": "compat-th", "ttl_sec": 600})
            cls.lock = post("/v1/locks", {"agent_id": "ref", "file_path": "compat.c", "ttl_sec": 600})
            cls.ref_storage = ref.storage
            ref.stop_process()
            cls.hub = Hub(cmd=cls.reader_cmd()).start(storage=ref.storage)
        except BaseException:
            ref.stop()
            raise
        cls.ref = ref

    @classmethod
    def tearDownClass(cls):
        if cls.__dict__.get("hub") is not None:
            cls.hub.stop()
        cls.ref.stop()

    def test_reads_reference_data(self):
        self.assertEqual(self.assertOk(self.hub.get("/v1/messages", channel="compat")), self.msgs)
        self.assertEqual(self.assertOk(self.hub.get("/v1/inbox/compat-agent")), [self.dm])
        chans = {c["name"]: c for c in self.assertOk(self.hub.get("/v1/channels"))}
        self.assertEqual(chans["compat"]["metadata"], {"x": 1})
        self.assertEqual(self.assertOk(self.hub.get("/v1/claims", thread_id="compat-th")), [self.claim])
        self.assertEqual([l for l in self.assertOk(self.hub.get("/v1/locks")) if l["file_path"] == "compat.c"],
                         [self.lock])
        tasks = self.assertOk(self.hub.get("/v1/tasks", channel="compat"))
        self.assertEqual([t["task_id"] for t in tasks], [self.task["id"]])
        th = self.assertOk(self.hub.get("/v1/threads/compat-th"))
        self.assertEqual(th["thread"]["root_task_id"], self.task["id"])
        self.assertEqual(th["thread"]["status"], "open")

    def test_same_instance_id(self):
        self.assertEqual(self.assertOk(self.hub.get("/v1/hub-info"))["instance_id"],
                         self.ref_info["instance_id"])

    def test_new_writes_continue(self):
        m = self.msg(channel="general", body="after")
        self.assertGreater(m["id"], self.dm["id"])
        self.assertErr(self.hub.post("/v1/sessions", {"agent_id": "compat-agent"}), 409)


@arc_only
class StorageForReferenceTests(ReferenceStorageTests):
    """... and the other way round: the reference serves what arc wrote."""

    @staticmethod
    def writer_cmd():
        return None

    @staticmethod
    def reader_cmd():
        return [sys.executable, reference_py()]



def thread_oracle(storage):
    """GET /v1/threads computed from the rows themselves (PROTOCOL §5.7,
    §7.15), as the reference derives it: every message, task, claim and lock."""
    import sqlite3
    from datetime import datetime, timezone
    db = sqlite3.connect(storage)
    db.row_factory = sqlite3.Row
    now = datetime.now(timezone.utc)
    active = lambda r: r["released_at"] is None and parse_ts(r["expires_at"]) >= now
    tids = [r[0] for r in db.execute(
        "SELECT thread_id FROM messages WHERE thread_id IS NOT NULL UNION "
        "SELECT thread_id FROM tasks WHERE thread_id IS NOT NULL UNION "
        "SELECT thread_id FROM claims WHERE thread_id IS NOT NULL")]
    locks = list(db.execute("SELECT * FROM locks"))
    out = []
    for t in tids:
        msgs = list(db.execute("SELECT * FROM messages WHERE thread_id=? ORDER BY id", (t,)))
        tasks = list(db.execute("SELECT * FROM tasks WHERE thread_id=? ORDER BY task_id", (t,)))
        claims = list(db.execute("SELECT * FROM claims WHERE thread_id=?", (t,)))
        tl = [l for l in locks if json.loads(l["metadata_json"]).get("thread_id") == t]
        roots = [x for x in tasks if x["parent_task_id"] is None]
        n_open = sum(x["status"] == "open" for x in tasks)
        ac, al = sum(map(active, claims)), sum(map(active, tl))
        arts = [m["id"] for m in msgs if m["kind"] == "artifact"]
        out.append({
            "thread_id": t,
            "channel": roots[0]["channel"] if roots else msgs[0]["channel"] if msgs
            else tasks[0]["channel"] if tasks else None,
            "root_task_id": roots[0]["task_id"] if roots else None,
            "latest_message_id": msgs[-1]["id"] if msgs else None,
            "latest_message_ts": msgs[-1]["ts"] if msgs else None,
            "latest_artifact_id": max(arts) if arts else None,
            "message_count": len(msgs), "total_task_count": len(tasks),
            "open_task_count": n_open, "active_claim_count": ac, "active_lock_count": al,
            "status": "completed" if tasks and not n_open else "open" if ac or al else "waiting"})
    db.close()
    out.sort(key=lambda x: (x["latest_message_id"] or -1, x["thread_id"]), reverse=True)
    return out


class ThreadSummaryTests(HubCase):
    """arc keeps a per-thread summary of messages up to a watermark (PROTOCOL
    §10.7); the list and a thread's summary stay what the rows say, whoever
    wrote them: this hub, another hub on the file, or a foreign writer."""

    def foreign_writes(self, tag, first_thread):
        """Rows in the reference's shape, written behind the hub's back: new
        messages in known and new threads, a task and its completion, a
        metadata rewrite, a claim of a thread without messages, a lock."""
        import sqlite3
        db = sqlite3.connect(self.hub.storage, timeout=10)
        ts = "2026-01-02T03:04:05.000000Z"
        ins = ("INSERT INTO messages(ts,from_agent,to_agent,channel,kind,body,attachments_json,"
               "reply_to,thread_id,metadata_json) VALUES(?,?,?,?,?,?,'[]',NULL,?,'{}')")
        db.execute(ins, (ts, "ref", None, "general", "artifact", "a", first_thread))
        for i in range(5):
            db.execute(ins, (ts, "ref", None, "general", "chat", "x", "%s-new-%d" % (tag, i % 2)))
        db.execute(ins, (ts, "ref", "someone", "direct", "chat", "dm", "%s-new-0" % tag))
        cur = db.execute(ins, (ts, "ref", None, "general", "task", "t", "%s-new-1" % tag))
        db.commit()   # the reference inserts the task row in a second transaction
        db.execute("INSERT INTO tasks VALUES(?,NULL,'general',?,'open',?,NULL)",
                   (cur.lastrowid, "%s-new-1" % tag, ts))
        db.execute("UPDATE tasks SET status='done',completed_at=? WHERE task_id="
                   "(SELECT min(task_id) FROM tasks WHERE status='open')", (ts,))
        db.execute("UPDATE messages SET metadata_json='{\"task_completed\":true}' WHERE id=?",
                   (cur.lastrowid,))
        db.execute("INSERT INTO claims VALUES(?,?,NULL,'ref',?,'2999-01-01T00:00:00Z',NULL,'{}')",
                   ("%s-claim" % tag, "%s-claimonly" % tag, ts))
        db.execute("INSERT INTO locks VALUES(?,'ref',?,'2999-01-01T00:00:00Z',NULL,?)",
                   ("%s.c" % tag, ts, json.dumps({"thread_id": first_thread})))
        db.commit()
        db.close()

    def check(self, hub=None):
        hub = hub or self.hub
        want = thread_oracle(self.hub.storage)
        got = self.assertOk(hub.get("/v1/threads"))
        mine = lambda l: [x for x in l if x["thread_id"].startswith(self.tag)]
        self.assertEqual(mine(got), mine(want))
        self.assertEqual([x["thread_id"] for x in got], [x["thread_id"] for x in want])
        for x in mine(want)[:5] + mine(want)[-5:]:
            one = self.assertOk(hub.get("/v1/threads/" + x["thread_id"]))["thread"]
            self.assertEqual(one, x)

    def test_many_threads_and_foreign_writes(self):
        self.tag = tag = uid("sum")
        ch = [self.channel() for _ in range(3)]
        for i in range(240):   # 120 threads, a few kinds, a DM in a thread
            t = "%s-%03d" % (tag, i % 120)
            kind = "task" if i < 20 else "artifact" if i % 7 == 0 else "chat"
            self.msg(channel=ch[i % 3], kind=kind, thread_id=t, body="m%d" % i)
        self.msg(to_agent="x", thread_id="%s-005" % tag, body="dm")
        self.assertOk(self.hub.post("/v1/claims", {"owner_agent_id": "a", "claim_key": tag + "k",
                                                   "thread_id": "%s-007" % tag, "ttl_sec": 600}), 201)
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": "a", "file_path": tag + "f",
                                                  "metadata": {"thread_id": "%s-008" % tag}}), 201)
        self.check()
        # Another process writes: the answers show it at once (the rows
        # above the watermark), and again once this hub has folded them in.
        self.foreign_writes(tag + "-f1", "%s-000" % tag)
        self.check()
        self.msg(channel=ch[0], thread_id="%s-001" % tag)   # folds the foreign rows too
        self.check()
        # A second hub on the file folds its own inserts: nothing twice.
        with Hub().start(storage=self.hub.storage) as other:
            for i in range(10):
                self.assertOk(other.post("/v1/messages", {"from_agent": "b", "channel": ch[1], "body": "b",
                                                          "thread_id": "%s-%03d" % (tag, i)}), 201)
                self.msg(channel=ch[2], thread_id="%s-%03d" % (tag, 119 - i))
            self.foreign_writes(tag + "-f2", "%s-002" % tag)
            self.check(other)
            self.check()

    @arc_only
    def test_summary_rebuilt_for_an_old_file(self):
        """A file without the summary (written by the reference, or by an
        older arc) is answered exactly at once and caught up in the
        background."""
        import sqlite3
        self.tag = tag = uid("old")
        for i in range(50):
            self.msg(thread_id="%s-%02d" % (tag, i % 17), kind="artifact" if i % 5 else "chat")
        self.hub.stop_process()
        db = sqlite3.connect(self.hub.storage)
        db.execute("DROP TABLE arc_thread_msgs")
        db.execute("DELETE FROM arc_folds")
        db.commit()
        db.close()
        self.hub.start(storage=self.hub.storage)
        self.check()

        def caught_up():
            db = sqlite3.connect(self.hub.storage)
            try:
                return db.execute("SELECT (SELECT upto FROM arc_folds)="
                                  "(SELECT max(id) FROM messages)").fetchone()[0] == 1
            finally:
                db.close()
        wait_for(caught_up, msg="the summary catches up")
        self.check()


class ThreadListCacheTests(HubCase):
    """arc keeps the last thread list and answers from it until something it
    reads changes (hub_threads_fresh): each change below must show in the
    very next list, and a lease's expiry with no request at all meanwhile."""

    def listed(self, th):
        rows = [t for t in self.assertOk(self.hub.get("/v1/threads")) if t["thread_id"] == th]
        self.assertEqual(len(rows), 1, "thread %s not listed exactly once" % th)
        return rows[0]

    def test_changes_show_at_once(self):
        ch, th = self.channel(), uid("lc")
        root = self.msg(channel=ch, thread_id=th, kind="task", body="root")
        first = self.listed(th)
        self.assertEqual(self.listed(th), first)   # the kept list, unchanged
        self.assertEqual(first["message_count"], 1)
        self.assertEqual(first["status"], "waiting")
        reply = self.msg(channel=ch, thread_id=th, body="reply")   # a post
        s = self.listed(th)
        self.assertEqual((s["message_count"], s["latest_message_id"]), (2, reply["id"]))
        other = uid("lc")   # a post in a thread not listed yet
        self.msg(channel=ch, thread_id=other, body="new")
        self.assertEqual(self.listed(other)["message_count"], 1)
        self.assertOk(self.hub.post("/v1/claims", {"owner_agent_id": "w", "claim_key": uid("ck"),
                                                   "thread_id": th}), 201)   # a claim
        s = self.listed(th)
        self.assertEqual((s["active_claim_count"], s["status"]), (1, "open"))
        path = uid("f")
        self.assertOk(self.hub.post("/v1/locks", {"agent_id": "w", "file_path": path,
                                                  "metadata": {"thread_id": th}}), 201)
        self.assertEqual(self.listed(th)["active_lock_count"], 1)   # a lock
        self.assertOk(self.hub.post("/v1/locks/release", {"agent_id": "w", "file_path": path}))
        self.assertEqual(self.listed(th)["active_lock_count"], 0)   # its release
        self.assertOk(self.hub.post("/v1/tasks/%d/complete" % root["id"]))   # a task completion
        s = self.listed(th)
        self.assertEqual((s["open_task_count"], s["status"]), (0, "completed"))

    def test_foreign_commit_shows(self):
        """Another process's commit (PRAGMA data_version) ends the kept list."""
        import sqlite3
        th = uid("lc")
        self.msg(thread_id=th, body="seed")
        self.assertEqual(self.listed(th)["active_claim_count"], 0)
        db = sqlite3.connect(self.hub.storage, timeout=10)
        db.execute("INSERT INTO claims VALUES(?,?,NULL,'ref',?,'2999-01-01T00:00:00Z',NULL,'{}')",
                   (uid("ck"), th, "2026-01-02T03:04:05.000000Z"))
        db.commit()
        db.close()
        self.assertEqual(self.listed(th)["active_claim_count"], 1)

    def test_lease_expiry_ends_the_kept_list(self):
        """Leases that expire with no write in between: the list changes by
        the clock alone. They are written behind the hub's back, with a
        lifetime under the API's 5 s minimum, to keep the test short."""
        import sqlite3
        from datetime import datetime, timedelta, timezone
        th = uid("lc")
        self.msg(thread_id=th, body="seed")
        now = datetime.now(timezone.utc)
        iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        db = sqlite3.connect(self.hub.storage, timeout=10)
        db.execute("INSERT INTO claims VALUES(?,?,NULL,'ref',?,?,NULL,'{}')",
                   (uid("ck"), th, iso(now), iso(now + timedelta(seconds=1.5))))
        db.execute("INSERT INTO locks VALUES(?,'ref',?,?,NULL,?)",
                   (uid("f"), iso(now), iso(now + timedelta(seconds=2.5)),
                    json.dumps({"thread_id": th})))
        db.commit()
        db.close()
        s = self.listed(th)
        if (s["active_claim_count"], s["active_lock_count"]) != (1, 1):
            self.skipTest("the machine took over 1.5 s to answer")
        self.assertEqual(s["status"], "open")
        wait_for(lambda: self.listed(th)["active_claim_count"] == 0, timeout=10,
                 msg="an expired claim still counted")
        self.assertEqual(self.listed(th)["active_lock_count"], 1)
        wait_for(lambda: self.listed(th)["active_lock_count"] == 0, timeout=10,
                 msg="an expired lock still counted")
        self.assertEqual(self.listed(th)["status"], "waiting")


class HistoryPageTests(HubCase):
    """A page whose messages are not in the hub's rendered-message cache
    (here: after a restart) is read as whole rows instead of by id
    (hub_wait_query): the same bytes either way, for every shape of read."""

    def test_pages_after_restart_are_identical(self):
        ch, th = self.channel(), uid("hp")
        first = self.msg(channel=ch, body="first")
        for i in range(30):
            self.msg(channel=ch, body="m%d \u00e9\"\n" % i, thread_id=th if i % 3 else None,
                     kind="artifact" if i % 5 == 0 else "chat",
                     reply_to=first["id"] if i % 4 == 0 else None,
                     metadata={"i": i, "s": "x"} if i % 2 else None,
                     attachments=[{"type": "text", "content": "a%d" % i}] if i % 7 == 0 else None)
        self.msg(to_agent="someone", channel=ch, thread_id=th, body="dm")
        reads = [dict(channel=ch, limit=10), dict(channel=ch, since_id=first["id"] + 3, limit=7),
                 dict(channel=ch, tail=1, limit=12), dict(thread_id=th, limit=50),
                 dict(thread_id=th, channel=ch, tail=1, limit=5),
                 dict(thread_id=th, channel=ch, since_id=first["id"], limit=500)]
        def pages():
            return [self.hub.get("/v1/messages", **r)[2] for r in reads]
        before = pages()
        for p in before:
            self.assertTrue(p["ok"] and p["result"], p)
        self.hub.restart()
        self.assertEqual(pages(), before)   # every first row a cache miss
        self.assertEqual(pages(), before)   # cached now
        self.hub.restart()   # a cached first row, misses after it
        self.hub.get("/v1/messages", channel=ch, since_id=first["id"] + 3, limit=1)
        self.assertEqual(pages(), before)


if __name__ == "__main__":
    unittest.main()
