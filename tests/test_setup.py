"""`arc setup HARNESS` and `arc doctor` (issue 18; docs/SETUP.md).

Golden files: tests/setup-golden/CASE/ holds `args` (the arguments after
`arc setup`), `in/` (the files before; absent = none) and `out/` (every
file after, backups included). `@ARC@` in them stands for the binary's
absolute path. User-scope cases (--scope user, copilot, windsurf) use a
temporary $HOME as their root; every case runs with $HOME in a temp dir.
Set ARC_SETUP_REGEN=1 to rewrite the out/ trees from the binary (then read
the diff before committing it).

Each golden case also checks: a second run changes nothing and says so;
--dry-run writes nothing; --remove gives back exactly the `in/` tree.
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

from hubtest import hub_command, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "setup-golden")
REGEN = os.environ.get("ARC_SETUP_REGEN") == "1"
ARC_PATH = os.path.realpath(hub_command()[-1])


def tree(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def put_tree(root, files):
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as fh:
            fh.write(data)


class SetupBase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="arc-setup-")
        self.proj = os.path.join(self.tmp, "proj")
        self.home = os.path.join(self.tmp, "home")
        os.makedirs(self.proj)
        os.makedirs(self.home)
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def arc(self, *args, cwd=None, ok=None):
        env = dict(os.environ, HOME=self.home, USER="tester")
        env.pop("ARC_TOKEN", None)
        p = subprocess.run(hub_command() + list(args), cwd=cwd or self.proj,
                           env=env, capture_output=True, text=True, timeout=60)
        if ok is not None:
            self.assertEqual(p.returncode, 0 if ok else 1,
                             "arc %s: %s %s" % (args, p.stdout, p.stderr))
        return p

    def write(self, rel, data, root=None):
        put_tree(root or self.proj, {rel: data.encode() if isinstance(data, str)
                                     else data})

    def read(self, rel, root=None):
        with open(os.path.join(root or self.proj, rel), "rb") as fh:
            return fh.read()


class Golden(SetupBase):
    """Every case under tests/setup-golden/."""

    def run_case(self, name):
        case = os.path.join(GOLDEN, name)
        with open(os.path.join(case, "args")) as fh:
            args = fh.read().split()
        user = "--scope" in args and "user" in args or \
            args[0] in ("copilot", "windsurf")
        root = self.home if user else self.proj
        inp = os.path.join(case, "in")
        before = tree(inp) if os.path.isdir(inp) else {}
        put_tree(root, before)

        # --dry-run writes nothing, but shows the change
        p = self.arc("setup", *args, "--dry-run", ok=True)
        self.assertIn("+++ ", p.stdout)
        self.assertEqual(tree(root), before)

        self.arc("setup", *args, ok=True)
        after = {k: v.replace(ARC_PATH.encode(), b"@ARC@")
                 for k, v in tree(root).items()}
        out = os.path.join(case, "out")
        if REGEN:
            shutil.rmtree(out, True)
            put_tree(out, after)
        self.assertEqual(after, tree(out), "golden %s differs" % name)

        # idempotent: the second run changes nothing and says so
        p = self.arc("setup", *args, ok=True)
        self.assertIn("nothing to change", p.stdout)
        self.assertEqual({k: v.replace(ARC_PATH.encode(), b"@ARC@")
                          for k, v in tree(root).items()}, after)

        # --remove gives back the original bytes, and nothing more
        p = self.arc("setup", *args, "--remove", ok=True)
        self.assertEqual(tree(root), before, p.stdout)


def _golden_test(name):
    return lambda self: self.run_case(name)


for _case in sorted(os.listdir(GOLDEN)) if os.path.isdir(GOLDEN) else []:
    setattr(Golden, "test_" + _case.replace("-", "_"), _golden_test(_case))


class Merge(SetupBase):
    def test_refuses_invalid_json_untouched(self):
        bad = b'{"mcpServers": {"x": 1},}\n'
        self.write(".mcp.json", bad)
        p = self.arc("setup", "claude", ok=False)
        self.assertIn("not valid JSON", p.stderr)
        self.assertIn("nothing was written", p.stdout)
        self.assertEqual(self.read(".mcp.json"), bad)
        self.assertEqual(sorted(tree(self.proj)), [".mcp.json"])

    def test_refuses_jsonc(self):
        jsonc = b'{\n  // VS Code allows comments\n  "servers": {}\n}\n'
        self.write(".vscode/mcp.json", jsonc)
        p = self.arc("setup", "vscode", ok=False)
        self.assertIn("no comments", p.stderr)
        self.assertEqual(self.read(".vscode/mcp.json"), jsonc)

    def test_refuses_non_object(self):
        self.write(".mcp.json", "[1, 2]\n")
        p = self.arc("setup", "claude", ok=False)
        self.assertIn("does not hold a JSON object", p.stderr)

    def test_refuses_symlinked_file(self):
        target = os.path.join(self.tmp, "elsewhere.json")
        with open(target, "w") as fh:
            fh.write("{}\n")
        os.symlink(target, os.path.join(self.proj, ".mcp.json"))
        p = self.arc("setup", "claude", ok=False)
        self.assertIn("symbolic link", p.stderr)
        with open(target) as fh:
            self.assertEqual(fh.read(), "{}\n")
        self.assertFalse(os.path.exists(os.path.join(self.proj, ".claude")))

    def test_refuses_symlinked_dir(self):
        real = os.path.join(self.tmp, "real")
        os.makedirs(real)
        os.symlink(real, os.path.join(self.proj, ".cursor"))
        p = self.arc("setup", "cursor", ok=False)
        self.assertIn("symbolic link", p.stderr)
        self.assertEqual(os.listdir(real), [])

    def test_refuses_foreign_toml_form(self):
        toml = b'[mcp_servers]\narc = { command = "x" }\n'
        self.write(".codex/config.toml", toml)
        p = self.arc("setup", "codex", ok=False)
        self.assertIn("inline table", p.stderr)
        self.assertEqual(self.read(".codex/config.toml"), toml)

    def test_hand_edit_then_remove_keeps_the_edit(self):
        orig = b'{\n  "model": "opus",\n  "hooks": {}\n}\n'
        self.write(".claude/settings.json", orig)
        self.arc("setup", "claude", ok=True)
        self.assertEqual(self.read(".claude/settings.json.arc-backup"), orig)
        edited = self.read(".claude/settings.json").replace(b'"opus"', b'"sonnet"')
        self.write(".claude/settings.json", edited)
        p = self.arc("setup", "claude", "--remove", ok=True)
        self.assertIn("took arc's entries out", p.stdout)
        self.assertEqual(self.read(".claude/settings.json"),
                         orig.replace(b'"opus"', b'"sonnet"'))
        self.assertIn("arc-backup kept", p.stdout)

    def test_user_handler_in_arc_group_survives_remove(self):
        self.arc("setup", "claude", "--agent", "a1", ok=True)
        s = self.read(".claude/settings.json")
        # a user adds a handler of their own inside arc's SessionStart group
        marker = b'"command": "' + ARC_PATH.encode() + b' hook claude SessionStart'
        i = s.index(marker)
        j = s.rindex(b"{", 0, i)
        s = s[:j] + b'{"type": "command", "command": "mine"},\n          ' + s[j:]
        self.write(".claude/settings.json", s)
        self.arc("setup", "claude", "--remove", "--agent", "a1", ok=True)
        s = self.read(".claude/settings.json")
        self.assertIn(b'"mine"', s)
        self.assertNotIn(b" hook claude ", s)

    def test_agent_change_replaces_in_place(self):
        self.arc("setup", "gemini", "--agent", "one", ok=True)
        self.arc("setup", "gemini", "--agent", "two", ok=True)
        s = self.read(".gemini/settings.json").decode()
        self.assertNotIn("--agent one", s)
        self.assertEqual(s.count("--agent two"), 7)   # its 7 hooks
        self.assertEqual(self.read(".arc/agent-gemini"), b"two\n")
        # --remove finds the agent in .arc/agent-gemini and deletes
        # every file setup made
        self.arc("setup", "gemini", "--remove", ok=True)
        self.assertEqual(tree(self.proj), {})

    def test_dropped_event_goes_on_rerun(self):
        """An event setup no longer writes (Cursor's beforeSubmitPrompt,
        which can only block a prompt) is taken out by the next run, and
        doctor calls the old wiring stale until then."""
        self.arc("setup", "cursor", "--agent", "c1", ok=True)
        doc = json.loads(self.read(".cursor/hooks.json"))
        self.assertNotIn("beforeSubmitPrompt", doc["hooks"])
        cmd = doc["hooks"]["stop"][0]["command"].replace(" stop ", " beforeSubmitPrompt ")
        doc["hooks"]["beforeSubmitPrompt"] = [
            {"command": "./mine.sh"}, {"command": cmd, "timeout": 10}]
        self.write(".cursor/hooks.json", json.dumps(doc, indent=2) + "\n")
        p = self.arc("doctor", ok=False)
        self.assertIn("cursor (project): .cursor/hooks.json differ", p.stdout)
        self.arc("setup", "cursor", "--agent", "c1", ok=True)
        doc = json.loads(self.read(".cursor/hooks.json"))
        self.assertEqual(doc["hooks"]["beforeSubmitPrompt"], [{"command": "./mine.sh"}])
        p = self.arc("doctor")
        self.assertIn("cursor (project): wired as setup wires it", p.stdout)

    def test_default_agent_name(self):
        p = self.arc("setup", "codex", "--dry-run", ok=True)
        self.assertIn("agent codex-proj", p.stdout)
        p = self.arc("setup", "codex", "--scope", "user", "--dry-run", ok=True)
        self.assertIn("agent codex-tester", p.stdout)

    def test_usage(self):
        self.assertEqual(self.arc("setup").returncode, 2)
        self.assertEqual(self.arc("setup", "emacs").returncode, 2)
        self.assertEqual(self.arc("setup", "claude", "--agent", "a b").returncode, 2)
        p = self.arc("setup", "--help", ok=True)
        self.assertIn("--dry-run", p.stdout)

    def test_keeps_mode(self):
        self.write(".mcp.json", "{}\n")
        os.chmod(os.path.join(self.proj, ".mcp.json"), 0o640)
        self.arc("setup", "claude", ok=True)
        self.assertEqual(os.stat(os.path.join(self.proj, ".mcp.json")).st_mode
                         & 0o777, 0o640)


class Doctor(SetupBase):
    def test_findings(self):
        p = self.arc("doctor", ok=False)
        self.assertIn("no hub answers", p.stdout)
        self.assertIn("fix: arc ensure", p.stdout)
        self.assertIn("claude (project): not set up", p.stdout)

        self.arc("setup", "claude", "--agent", "doc", ok=True)
        port = str(free_port())
        self.arc("ensure", "--port", port, ok=True)
        self.addCleanup(self.arc, "stop", "--port", port)
        p = self.arc("doctor", ok=True)
        self.assertIn("hub answers", p.stdout)
        self.assertIn("claude (project): wired as setup wires it (agent doc)",
                      p.stdout)
        self.assertIn("0 problems", p.stdout)

        # a hook taken out by hand is a finding with its fix
        s = self.read(".claude/settings.json").replace(b"SessionEnd", b"Other")
        self.write(".claude/settings.json", s)
        p = self.arc("doctor", self.proj, cwd=self.tmp, ok=False)
        self.assertIn("FAIL claude (project): .claude/settings.json differ", p.stdout)
        self.assertIn("fix: arc setup claude --agent doc", p.stdout)
        self.arc("setup", "claude", "--agent", "doc", ok=True)
        self.arc("doctor", ok=True)

    def test_invalid_config_is_a_finding(self):
        self.write(".cursor/mcp.json", "{oops")
        p = self.arc("doctor", ok=False)
        self.assertIn("FAIL .cursor/mcp.json", p.stdout)

    def test_user_scope(self):
        self.arc("setup", "windsurf", "--agent", "w", ok=True)
        p = self.arc("doctor")
        self.assertIn("windsurf (user): wired as setup wires it (agent w)",
                      p.stdout)



class Channel(SetupBase):
    """`arc setup claude --channel`: the MCP entry runs `arc mcp --channel`
    (docs/MCP.md, "Claude Code channels"); doctor takes either variant as
    setup's; a run without --channel goes back; other harnesses refuse it."""

    def args(self):
        return json.loads(self.read(".mcp.json"))["mcpServers"]["arc"]["args"]

    def test_channel_variant(self):
        p = self.arc("setup", "claude", "--agent", "ch", "--channel", ok=True)
        self.assertIn("--dangerously-load-development-channels server:arc", p.stdout)
        self.assertEqual(self.args(), ["mcp", "--agent", "ch", "--channel"])
        p = self.arc("doctor")
        self.assertIn("claude (project): wired as setup wires it (agent ch)", p.stdout)
        p = self.arc("setup", "claude", "--agent", "ch", "--channel", ok=True)
        self.assertIn("nothing to change", p.stdout)
        # the plain entry back, in place
        self.arc("setup", "claude", "--agent", "ch", ok=True)
        self.assertEqual(self.args(), ["mcp", "--agent", "ch"])
        self.arc("setup", "claude", "--remove", ok=True)
        self.assertEqual(tree(self.proj), {})
        self.assertEqual(self.arc("setup", "codex", "--channel").returncode, 2)
        self.assertEqual(tree(self.proj), {})

if __name__ == "__main__":
    unittest.main()
