"""A fake model server for the real-client tests, on loopback (stdlib only).

It speaks just enough of two wire APIs for a coding harness to run a turn:
- the Anthropic Messages API (Claude Code, ANTHROPIC_BASE_URL):
  POST /v1/messages, streaming (SSE: message_start, content_block_start /
  content_block_delta / content_block_stop for text and for tool_use with
  input_json_delta, message_delta, message_stop) or not, and
  POST /v1/messages/count_tokens;
- the OpenAI Responses API (Codex, a model_providers entry's base_url):
  POST /v1/responses, streaming (response.created,
  response.output_item.added / .done for a function_call or a message,
  response.output_text.delta, response.completed), and GET /v1/models;
- the Gemini API (Gemini CLI, GOOGLE_GEMINI_BASE_URL):
  POST /v1beta/models/MODEL:generateContent and :streamGenerateContent
  (?alt=sse: one SSE event holding the whole reply), text and functionCall
  parts.

Replies are scripted. A script is a list of turns; each turn is a list of
blocks, {"text": "..."} or {"tool": "NAME", "input": {...}}. Which turn a
request gets is derived from the request itself, so the server keeps no
conversation state: the number of assistant turns already in it (Anthropic:
assistant messages; Responses: function_call items; Gemini: model contents
with a functionCall). A request past the
end of the script, and a side request that offers no tools (titles, topic
checks, quota probes), gets a short text reply. A tool NAME is matched
against the request's tools: an exact name, else the one tool whose name
ends with "__NAME" or "_NAME" (clients prefix MCP tools differently:
Claude Code mcp__arc__NAME, Codex its own), else NAME as given.

Every request (method, path, headers, parsed body) is recorded in
FakeModel.requests and, with --log, appended to a JSON-lines file.

As a program (for trying a client by hand):
  python3 tests/fakemodel.py --port 8123 --script turns.json --log reqs.jsonl
"""

import argparse
import http.server
import json
import socketserver
import sys
import threading
import time

SIDE_TEXT = "ok"      # the reply to side requests and past the script's end


def resolve_tool(name, offered):
    """The offered tool name the script's NAME stands for."""
    if name in offered:
        return name
    hits = [t for t in offered if t.endswith("__" + name) or t.endswith("_" + name)]
    return hits[0] if len(hits) == 1 else name


def sse(event, data):
    """One SSE event; Anthropic names every event, OpenAI's carry type."""
    head = "event: %s\n" % event if event else ""
    return (head + "data: %s\n\n" % json.dumps(data)).encode()


class FakeModel:
    """The server: start() binds and serves in a thread; close() stops it.

    bind: a callable that creates the listening socket's server (the
    harness passes one that runs inside the test's network namespace);
    the default binds 127.0.0.1 on a free port here.
    """

    def __init__(self, script=None, log_path=None):
        self.script = list(script or [])
        self.log_path = log_path
        self.requests = []            # guarded by lock
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.server = None
        self.thread = None
        self.port = None
        self.n_ids = 0

    def start(self, bind=None, port=0):
        make = lambda: _Server(("127.0.0.1", port), _Handler)  # noqa: E731
        self.server = bind(make) if bind else make()
        self.server.model = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def close(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def record(self, entry):
        with self.cond:
            self.requests.append(entry)
            self.cond.notify_all()
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def wait_for(self, pred, timeout):
        """Wait until pred(requests) is true; return it (or None at the deadline)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred(self.requests)
                if v or time.monotonic() >= deadline:
                    return v
                self.cond.wait(max(0.01, deadline - time.monotonic()))

    def next_id(self, prefix):
        with self.lock:
            self.n_ids += 1
            return "%s_%04d" % (prefix, self.n_ids)

    def turn(self, index, offered):
        """The blocks of turn `index`, tool names resolved against `offered`;
        a text block when there is no such turn or no tools were offered."""
        if not offered or index >= len(self.script):
            return [{"text": SIDE_TEXT}]
        out = []
        for b in self.script[index]:
            if "tool" in b:
                out.append({"tool": resolve_tool(b["tool"], offered),
                            "input": b.get("input", {})})
            else:
                out.append({"text": b.get("text", "")})
        return out


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):   # the record is the log
        pass

    # plumbing
    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _record(self, body):
        self.server.model.record({
            "t": time.time(), "method": self.command, "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body})

    def _json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream_start(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()

    # routes
    def do_GET(self):
        self._record(None)
        path = self.path.split("?")[0]
        if path.endswith("/models"):
            self._json(200, {"object": "list", "data": [], "models": []})
        else:
            self._json(404, {"error": {"type": "not_found", "message": path}})

    def do_HEAD(self):
        self._record(None)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self._body()
        self._record(body)
        path = self.path.split("?")[0]
        if not isinstance(body, dict):
            self._json(400, {"error": {"type": "invalid_request_error",
                                       "message": "JSON body expected"}})
        elif path.endswith("/messages/count_tokens"):
            self._json(200, {"input_tokens": 100})
        elif path.endswith("/messages"):
            self.do_anthropic(body)
        elif path.endswith("/responses"):
            self.do_responses(body)
        elif path.endswith(":generateContent") or path.endswith(":streamGenerateContent"):
            self.do_gemini(body, path.endswith(":streamGenerateContent"))
        else:
            self._json(404, {"error": {"type": "not_found", "message": path}})

    # Anthropic Messages
    def do_anthropic(self, body):
        m = self.server.model
        offered = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
        index = sum(1 for msg in body.get("messages") or []
                    if isinstance(msg, dict) and msg.get("role") == "assistant")
        blocks = m.turn(index, offered)
        content = []
        for b in blocks:
            if "tool" in b:
                content.append({"type": "tool_use", "id": m.next_id("toolu"),
                                "name": b["tool"], "input": b["input"]})
            else:
                content.append({"type": "text", "text": b["text"]})
        stop = "tool_use" if any(c["type"] == "tool_use" for c in content) else "end_turn"
        msg = {"id": m.next_id("msg"), "type": "message", "role": "assistant",
               "model": body.get("model", "fake"), "content": content,
               "stop_reason": stop, "stop_sequence": None,
               "usage": {"input_tokens": 100, "output_tokens": 10,
                         "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": 0}}
        if not body.get("stream"):
            self._json(200, msg)
            return
        self._stream_start()
        w = self.wfile.write
        start = dict(msg, content=[], stop_reason=None,
                     usage=dict(msg["usage"], output_tokens=1))
        w(sse("message_start", {"type": "message_start", "message": start}))
        for i, c in enumerate(content):
            if c["type"] == "tool_use":
                w(sse("content_block_start", {
                    "type": "content_block_start", "index": i,
                    "content_block": dict(c, input={})}))
                js = json.dumps(c["input"])
                for part in (js[:len(js) // 2], js[len(js) // 2:]):  # two deltas
                    w(sse("content_block_delta", {
                        "type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": part}}))
            else:
                w(sse("content_block_start", {
                    "type": "content_block_start", "index": i,
                    "content_block": {"type": "text", "text": ""}}))
                w(sse("content_block_delta", {
                    "type": "content_block_delta", "index": i,
                    "delta": {"type": "text_delta", "text": c["text"]}}))
            w(sse("content_block_stop", {"type": "content_block_stop", "index": i}))
        w(sse("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": stop, "stop_sequence": None},
                                "usage": {"output_tokens": 10}}))
        w(sse("message_stop", {"type": "message_stop"}))
        self.wfile.flush()

    # OpenAI Responses
    def do_responses(self, body):
        m = self.server.model
        # Codex groups an MCP server's tools in a namespace tool
        # ({"type": "namespace", "name": "mcp__arc", "tools": [...]}); a
        # call of one of them names the namespace beside the tool.
        offered, namespace_of = [], {}
        for t in body.get("tools") or []:
            if not isinstance(t, dict):
                continue
            if t.get("type") == "namespace":
                for sub in t.get("tools") or []:
                    if isinstance(sub, dict) and sub.get("name"):
                        offered.append(sub["name"])
                        namespace_of[sub["name"]] = t.get("name")
            elif t.get("name"):
                offered.append(t["name"])
        items = body.get("input") if isinstance(body.get("input"), list) else []
        index = sum(1 for it in items
                    if isinstance(it, dict) and it.get("type") == "function_call")
        blocks = m.turn(index, offered)
        rid = m.next_id("resp")
        out = []
        for b in blocks:
            if "tool" in b:
                call = {"type": "function_call", "id": m.next_id("fc"),
                        "call_id": m.next_id("call"), "name": b["tool"],
                        "arguments": json.dumps(b["input"]), "status": "completed"}
                if b["tool"] in namespace_of:
                    call["namespace"] = namespace_of[b["tool"]]
                out.append(call)
            else:
                out.append({"type": "message", "id": m.next_id("msg"),
                            "role": "assistant", "status": "completed",
                            "content": [{"type": "output_text", "text": b["text"],
                                         "annotations": []}]})
        usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 110}
        resp = {"id": rid, "object": "response", "created_at": int(time.time()),
                "model": body.get("model", "fake"), "status": "completed",
                "output": out, "usage": usage}
        if not body.get("stream"):
            self._json(200, resp)
            return
        self._stream_start()
        w = self.wfile.write
        seq = iter(range(1, 1000))
        w(sse("response.created", {"type": "response.created", "sequence_number": 0,
                                   "response": dict(resp, status="in_progress",
                                                    output=[], usage=None)}))
        for i, it in enumerate(out):
            added = dict(it, status="in_progress")
            if it["type"] == "message":
                added["content"] = []
            else:
                added["arguments"] = ""
            w(sse("response.output_item.added", {
                "type": "response.output_item.added", "sequence_number": next(seq),
                "output_index": i, "item": added}))
            if it["type"] == "message":
                w(sse("response.output_text.delta", {
                    "type": "response.output_text.delta", "sequence_number": next(seq),
                    "item_id": it["id"], "output_index": i, "content_index": 0,
                    "delta": it["content"][0]["text"]}))
            else:
                w(sse("response.function_call_arguments.delta", {
                    "type": "response.function_call_arguments.delta",
                    "sequence_number": next(seq), "item_id": it["id"],
                    "output_index": i, "delta": it["arguments"]}))
            w(sse("response.output_item.done", {
                "type": "response.output_item.done", "sequence_number": next(seq),
                "output_index": i, "item": it}))
        w(sse("response.completed", {"type": "response.completed",
                                     "sequence_number": next(seq), "response": resp}))
        self.wfile.flush()


    # Gemini API (Gemini CLI, GOOGLE_GEMINI_BASE_URL)
    def do_gemini(self, body, stream):
        m = self.server.model
        offered = [f.get("name") for t in body.get("tools") or [] if isinstance(t, dict)
                   for f in t.get("functionDeclarations") or [] if isinstance(f, dict)]
        index = sum(1 for c in body.get("contents") or []
                    if isinstance(c, dict) and c.get("role") == "model"
                    and any("functionCall" in p for p in c.get("parts") or []
                            if isinstance(p, dict)))
        parts = []
        for b in m.turn(index, offered):
            if "tool" in b:
                parts.append({"functionCall": {"name": b["tool"], "args": b["input"],
                                               "id": m.next_id("call")}})
            else:
                parts.append({"text": b["text"]})
        resp = {"candidates": [{"content": {"role": "model", "parts": parts},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10,
                                  "totalTokenCount": 110},
                "modelVersion": "fake", "responseId": m.next_id("resp")}
        if not stream:
            self._json(200, resp)
            return
        self._stream_start()
        self.wfile.write(("data: %s\r\n\r\n" % json.dumps(resp)).encode())
        self.wfile.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--script", help="JSON file: a list of turns")
    ap.add_argument("--log", help="append every request here (JSON lines)")
    a = ap.parse_args(argv)
    script = []
    if a.script:
        with open(a.script) as f:
            script = json.load(f)
    m = FakeModel(script, a.log).start(port=a.port)
    print("fakemodel: listening on %s" % m.url, flush=True)
    try:
        m.thread.join()
    except KeyboardInterrupt:
        pass
    m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
