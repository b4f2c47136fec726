"""Real MCP clients (Claude Code, Codex, Gemini CLI, the MCP Inspector)
against a real hub, isolated from the machine and the network.

Isolation, for every test that runs a client:
- A network namespace with only loopback (`unshare --net`, then `ip link
  set lo up`), held open by a sleeping process. The hub, the clients and
  their `arc mcp` children run in it (`nsenter --net=...`); the fake model,
  the proxy trap and the test's own requests to the hub bind or connect
  from a thread that entered it (setns(2) is per thread for network
  namespaces, so the rest of the test process is unaffected). Nothing in
  the namespace can reach another host: there is no route.
- A proxy trap: HTTP_PROXY / HTTPS_PROXY point every client at a listener
  in the namespace that records the host of each CONNECT or absolute-URL
  request and refuses it (NO_PROXY exempts loopback). A client that tries
  to reach a host despite the settings below shows up in Netns.trap_hosts
  instead of failing silently on a missing route.
- HOME, XDG_*_HOME, TMPDIR, CODEX_HOME in a fresh temporary directory.
- Telemetry, update checks and other optional traffic off, per client,
  by environment (client_env) and by config files (write_*_config).

Installs: tests/setup-clients.sh puts the pinned clients in
tests/clients/node_modules and Node 22 (for the Inspector and the
conformance runner) in tests/node22/node_modules. missing() says why a
test cannot run.
"""

import ctypes
import json
import os
import shlex
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import unittest

import hubtest
from hubtest import KEEP, Hub, hub_command

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
CLIENTS = os.path.join(HERE, "clients", "node_modules")
NODE22_DIR = os.path.join(HERE, "node22", "node_modules")
NODE22 = os.path.join(NODE22_DIR, "node", "bin", "node")
CONFORMANCE = os.path.join(NODE22_DIR, "@modelcontextprotocol", "conformance",
                           "dist", "index.js")
INSPECTOR = os.path.join(CLIENTS, "@modelcontextprotocol", "inspector", "clients",
                         "launcher", "build", "index.js")
# The pinned versions (tests/clients/package.json, tests/node22/package.json).
VERSIONS = {"claude": "2.1.337", "codex": "0.171.0", "gemini": "0.61.0",
            "inspector": "2.12.0", "conformance": "0.2.0-alpha.12", "node22": "22.23.3"}
BINS = {"claude": os.path.join(CLIENTS, ".bin", "claude"),
        "codex": os.path.join(CLIENTS, ".bin", "codex"),
        "gemini": os.path.join(CLIENTS, ".bin", "gemini")}
CLONE_NEWNET = 0x40000000
SETUP = "tests/setup-clients.sh (make test runs it)"


def missing(*names):
    """Why tests needing these installs cannot run here, or None. Names:
    claude codex gemini inspector conformance (the last two need node22)."""
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        return "unshare/nsenter (util-linux) missing"
    if not shutil.which("ip"):
        return "ip (iproute2) missing: %s installs it" % SETUP
    if os.geteuid() != 0:
        return "network namespaces need root here (unshare --net)"
    why = Netns.unusable()
    if why:
        return why
    for n in names:
        if n in BINS:
            path = BINS[n]
        elif n == "inspector":
            path = INSPECTOR
        elif n == "conformance":
            path = CONFORMANCE
        else:
            raise ValueError(n)
        if not os.path.exists(path):
            return "%s is not installed (%s; see tests/out/setup-clients-*.log)" % (n, SETUP)
        if n in ("inspector", "conformance") and not os.access(NODE22, os.X_OK):
            return "Node 22 is not installed (%s)" % SETUP
    return None


# ── The network namespace ──────────────────────────────────────────────

class Netns:
    """A network namespace with loopback only, alive until close()."""

    _probe = None     # cached result of unusable()

    @classmethod
    def unusable(cls):
        """Why a namespace cannot be made here, or None (tried once)."""
        if cls._probe is None:
            try:
                r = subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up"],
                                   capture_output=True, text=True, timeout=20)
                cls._probe = ("" if r.returncode == 0 else
                              "unshare --net failed: %s" % r.stderr.strip()[:200])
            except (OSError, subprocess.TimeoutExpired) as e:
                cls._probe = "unshare --net failed: %s" % e
        return cls._probe or None

    def __init__(self):
        self.proc = subprocess.Popen(
            ["unshare", "--net", "sh", "-c",
             "ip link set lo up && echo up && exec sleep 100000"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if line.strip() != b"up":
            self.proc.kill()
            raise AssertionError("network namespace did not come up")
        self.path = "/proc/%d/ns/net" % self.proc.pid
        self.fd = os.open(self.path, os.O_RDONLY)
        self.prefix = ["nsenter", "--net=" + self.path, "--"]
        self.trap = None
        self.trap_hosts = []     # hosts a client tried to reach through the trap

    def call(self, fn, *args, **kw):
        """Run fn(*args, **kw) in a thread inside the namespace; return its
        value or raise its exception. Sockets it creates stay in the
        namespace whichever thread uses them later."""
        box = {}

        def body():
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(self.fd, CLONE_NEWNET) != 0:
                box["exc"] = OSError(ctypes.get_errno(), "setns")
                return
            try:
                box["value"] = fn(*args, **kw)
            except BaseException as e:   # re-raised in the caller
                box["exc"] = e
        t = threading.Thread(target=body)
        t.start()
        t.join()
        if "exc" in box:
            raise box["exc"]
        return box.get("value")

    def free_port(self):
        return self.call(hubtest.free_port)

    def start_trap(self):
        """The proxy trap (see the module comment); returns its URL."""
        hosts = self.trap_hosts

        class H(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    line = self.rfile.readline(8192).decode("latin-1").strip()
                except OSError:
                    return
                parts = line.split()
                if len(parts) >= 2:
                    target = parts[1]
                    if "://" in target:
                        target = target.split("://", 1)[1].split("/", 1)[0]
                    hosts.append(target)
                try:
                    self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                except OSError:
                    pass

        class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.trap = self.call(S, ("127.0.0.1", 0), H)
        threading.Thread(target=self.trap.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return "http://127.0.0.1:%d" % self.trap.server_address[1]

    def close(self):
        if self.trap:
            self.trap.shutdown()
            self.trap.server_close()
            self.trap = None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class NsHub(Hub):
    """hubtest.Hub started inside a Netns; its request helpers connect
    from inside too."""

    def __init__(self, ns, **kw):
        super().__init__(cmd=ns.prefix + hub_command(), **kw)
        self.ns = ns

    def start(self, extra_args=(), storage=None, port=None):
        return super().start(extra_args, storage, port or self.ns.free_port())

    def request(self, *a, **kw):
        return self.ns.call(Hub.request, self, *a, **kw)

    def raw(self, *a, **kw):
        return self.ns.call(Hub.raw, self, *a, **kw)


class NsCase(unittest.TestCase):
    """One namespace, proxy trap and NsHub per class, shared by its tests;
    each test skips when the class cannot run here (why_not()). With
    check_trap, tearDown asserts that no client of the test tried to reach
    a host through the trap."""

    needs = ()            # missing() names
    programs = ()         # other programs the tests run (e.g. tmux)
    trap = True           # start the proxy trap (trap_url), else trap_url = None
    check_trap = True
    hub_port = None       # a fixed port for the hub, else a free one

    @classmethod
    def why_not(cls):
        """Why this class's tests cannot run here, or None."""
        why = missing(*cls.needs)
        for prog in cls.programs:
            if not why and not shutil.which(prog):
                why = "%s is not installed" % prog
        return why

    @classmethod
    def setUpClass(cls):
        cls.reason = cls.why_not()
        cls.ns = cls.hub = None
        if cls.reason:
            return
        cls.ns = Netns()
        try:
            cls.trap_url = cls.ns.start_trap() if cls.trap else None
            cls.hub = NsHub(cls.ns).start(port=cls.hub_port)
        except BaseException:
            cls.ns.close()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.hub:
            cls.hub.stop()
        if cls.ns:
            cls.ns.close()

    def setUp(self):
        if self.reason:
            self.skipTest(self.reason)
        self.trap_before = len(self.ns.trap_hosts)

    def tearDown(self):
        if self.reason or not self.check_trap:
            return
        tried = self.ns.trap_hosts[self.trap_before:]
        self.assertEqual(tried, [], "a client tried to reach hosts other than loopback")


# ── Client homes, environments and configs ─────────────────────────────

class Home:
    """A temporary HOME (with XDG dirs and a project directory) for one
    client run."""

    def __init__(self, prefix="arc-client-"):
        self.root = tempfile.mkdtemp(prefix=prefix)
        self.home = os.path.join(self.root, "home")
        self.project = os.path.join(self.root, "project")
        self.tmp = os.path.join(self.root, "tmp")
        for d in (self.home, self.project, self.tmp,
                  *(os.path.join(self.home, x)
                    for x in (".config", ".cache", ".local/share", ".local/state",
                              ".codex", ".gemini", ".claude"))):
            os.makedirs(d, exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.home, *parts)

    def write(self, rel, text):
        p = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
        return p

    def cleanup(self):
        if not KEEP:
            shutil.rmtree(self.root, ignore_errors=True)


# The environment variables that keep each client quiet (besides the
# config files below). Claude Code: CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC
# implies DISABLE_TELEMETRY, DISABLE_ERROR_REPORTING, DISABLE_AUTOUPDATER
# and DISABLE_BUG_COMMAND (set too, for older readers). Gemini CLI:
# GEMINI_TELEMETRY_ENABLED=false beside settings.json's telemetry block.
QUIET_ENV = {
    "claude": {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
               "DISABLE_AUTOUPDATER": "1", "DISABLE_BUG_COMMAND": "1",
               "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
               "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
               "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
               "CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS": "1",
               "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
               "ENABLE_TOOL_SEARCH": "false",
               "IS_SANDBOX": "1"},
    "codex": {},
    "gemini": {"GEMINI_TELEMETRY_ENABLED": "false",
               "GEMINI_SANDBOX": "false",
               "GEMINI_CLI_NO_RELAUNCH": "true",
               "NO_BROWSER": "true"},
    "inspector": {},
}
FAKE_KEY = "sk-fake-key-for-tests"


def client_env(home, client, trap_url=None, extra=None):
    """A minimal environment for one client: PATH and locale from ours,
    everything else from scratch (no keys, tokens or proxies leak in)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "LANG": "C.UTF-8", "TERM": "dumb", "NO_COLOR": "1", "CI": "1",
           "HOME": home.home, "USER": "arc-test", "LOGNAME": "arc-test",
           "XDG_CONFIG_HOME": home.path(".config"),
           "XDG_CACHE_HOME": home.path(".cache"),
           "XDG_DATA_HOME": home.path(".local/share"),
           "XDG_STATE_HOME": home.path(".local/state"),
           "TMPDIR": home.tmp,
           "CODEX_HOME": home.path(".codex"),
           "npm_config_update_notifier": "false",
           "NO_UPDATE_NOTIFIER": "1"}
    if trap_url:
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                  "http_proxy", "https_proxy", "all_proxy"):
            env[k] = trap_url
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env.update(QUIET_ENV[client])
    if extra:
        env.update(extra)
    return env


def arc_stdio(hub, agent):
    """The command and args a client's config names for `arc mcp`."""
    cmd = hub_command()
    return cmd[0], cmd[1:] + ["mcp", "--agent", agent, "--base-url", hub.url,
                              "--no-autostart"]


def write_claude_config(home, servers, interactive=False):
    """Claude Code: user-scope MCP servers in ~/.claude.json (where `claude
    mcp add --scope user` puts them: never settings.json, which it ignores
    for servers) and the quiet settings in ~/.claude/settings.json.
    servers: name -> {"command","args"} or {"type":"http","url","headers"}.
    interactive: the client run without -p asks once whether to use
    ANTHROPIC_API_KEY; the answer (yes, for FAKE_KEY) goes where it
    records it."""
    state = {"hasCompletedOnboarding": True, "numStartups": 1,
             "autoUpdates": False, "bypassPermissionsModeAccepted": True,
             "mcpServers": servers,
             "projects": {home.project: {"hasTrustDialogAccepted": True,
                                         "allowedTools": [],
                                         "hasCompletedProjectOnboarding": True}}}
    if interactive:
        state["customApiKeyResponses"] = {"approved": [FAKE_KEY[-20:]], "rejected": []}
    with open(home.path(".claude.json"), "w") as f:
        json.dump(state, f, indent=1)
    settings = {"env": dict(QUIET_ENV["claude"]), "autoUpdates": False,
                "includeCoAuthoredBy": False, "spinnerTipsEnabled": False,
                "feedbackSurveyState": {"lastShownTime": 0}}
    with open(home.path(".claude", "settings.json"), "w") as f:
        json.dump(settings, f, indent=1)


def toml_str(s):
    return json.dumps(s)      # a JSON string is a valid TOML basic string


def write_codex_config(home, servers, model_url=None):
    """Codex: $CODEX_HOME/config.toml with the fake model as the provider,
    analytics, feedback, OpenTelemetry and the update check off, and the
    MCP servers (name -> {"command","args"} or {"url","headers"})."""
    lines = ['model = "fake-model"',
             'check_for_update_on_startup = false',
             'approval_policy = "never"',
             'sandbox_mode = "danger-full-access"',
             'disable_paste_burst = true',
             'hide_agent_reasoning = true',
             'show_raw_agent_reasoning = false']
    if model_url:
        lines += ['model_provider = "fake"']
    # [features] plugins: the curated-plugin sync at start reaches github.com,
    # api.github.com and chatgpt.com otherwise.
    lines += ['', '[features]', 'plugins = false',
              '', '[analytics]', 'enabled = false',
              '', '[feedback]', 'enabled = false',
              '', '[otel]', 'exporter = "none"', 'log_user_prompt = false',
              '', '[history]', 'persistence = "none"',
              '', '[projects.%s]' % toml_str(home.project), 'trust_level = "trusted"']
    if model_url:
        lines += ['', '[model_providers.fake]', 'name = "fake"',
                  'base_url = %s' % toml_str(model_url + "/v1"),
                  'env_key = "FAKE_OPENAI_KEY"', 'wire_api = "responses"',
                  'request_max_retries = 0', 'stream_max_retries = 0',
                  'supports_websockets = false']
    for name, s in servers.items():
        lines += ['', '[mcp_servers.%s]' % name]
        if "url" in s:
            lines.append('url = %s' % toml_str(s["url"]))
            if s.get("headers"):
                lines.append('http_headers = { %s }' % ", ".join(
                    "%s = %s" % (toml_str(k), toml_str(v)) for k, v in s["headers"].items()))
        else:
            lines.append('command = %s' % toml_str(s["command"]))
            lines.append('args = [%s]' % ", ".join(toml_str(a) for a in s["args"]))
        # required: wait for the server before the first model request
        # (else a slow start leaves arc's tools out of it) and fail if it
        # does not start.
        lines.append('startup_timeout_sec = 20')
        lines.append('required = true')
    with open(home.path(".codex", "config.toml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def write_gemini_config(home, servers):
    """Gemini CLI: ~/.gemini/settings.json with telemetry, usage statistics
    and auto-update off, an API-key auth type (no browser login) and the
    MCP servers (name -> {"command","args"} or {"httpUrl","headers"})."""
    settings = {
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False,
                    "checkpointing": {"enabled": False}},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False, "logPrompts": False},
        "security": {"auth": {"selectedType": "gemini-api-key"},
                     "folderTrust": {"enabled": False}},
        "ide": {"enabled": False, "hasSeenNudge": True},
        "ui": {"hideBanner": True, "hideTips": True},
        "mcpServers": servers,
    }
    with open(home.path(".gemini", "settings.json"), "w") as f:
        json.dump(settings, f, indent=1)


# ── Running ────────────────────────────────────────────────────────────

class Ran:
    """What one client run left: exit code, output, seconds."""

    def __init__(self, argv, code, out, err, secs):
        self.argv, self.code, self.out, self.err, self.secs = argv, code, out, err, secs

    def __repr__(self):
        return ("$ %s\nexit %s after %.1fs\n--- stdout\n%s\n--- stderr\n%s"
                % (" ".join(self.argv), self.code, self.secs, self.out[-4000:],
                   self.err[-4000:]))


def run(ns, argv, env, cwd, timeout=60, stdin=None):
    """Run argv inside the namespace; returns a Ran (code None on timeout,
    after the process group has been killed)."""
    t0 = time.monotonic()
    p = subprocess.Popen(ns.prefix + list(argv), env=env, cwd=cwd,
                         stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        out, err = p.communicate(stdin.encode() if stdin is not None else None,
                                 timeout=timeout)
        code = p.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, 9)
        except OSError:
            pass
        out, err = p.communicate()
        code = None
    return Ran(list(argv), code, out.decode("utf-8", "replace"),
               err.decode("utf-8", "replace"), time.monotonic() - t0)


def tmux_claude(test, ns, home, env, args):
    """Claude Code run interactively, as a user's: in a tmux pane (150x45)
    inside the namespace, in home.project, with env (less CI) and args
    after the model and permission flags; stderr to claude.err in
    home.root. The tmux server is killed at test's cleanup. Returns
    pane(), the pane's text now."""
    env = dict(env)
    env.pop("CI", None)
    script = os.path.join(home.root, "claude.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexec env -i %s %s --model claude-sonnet-4-5 "
                "--dangerously-skip-permissions %s 2>%s\n" % (
                    " ".join(shlex.quote("%s=%s" % kv) for kv in sorted(env.items())),
                    shlex.quote(BINS["claude"]), " ".join(shlex.quote(a) for a in args),
                    shlex.quote(os.path.join(home.root, "claude.err"))))
    os.chmod(script, 0o755)
    sock = os.path.join(home.root, "tmux.sock")
    subprocess.run(ns.prefix + ["tmux", "-S", sock, "new-session", "-d", "-x", "150",
                                "-y", "45", "-c", home.project, script],
                   check=True, timeout=20)
    test.addCleanup(subprocess.run, ["tmux", "-S", sock, "kill-server"],
                    capture_output=True, timeout=20)

    def pane():
        return subprocess.run(["tmux", "-S", sock, "capture-pane", "-p"],
                              capture_output=True, text=True, timeout=20).stdout
    return pane


def node22_argv(script, *args):
    return [NODE22, script] + list(args)
