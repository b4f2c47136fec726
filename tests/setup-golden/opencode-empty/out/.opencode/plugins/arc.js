// arc setup opencode: written by `arc setup opencode`; `arc setup opencode --remove`
// deletes it. It runs `arc hook opencode EVENT` (docs/SETUP.md).
import { spawn } from "node:child_process";

const ARC = "@ARC@";
const AGENT = "golden";

function hook(event, input) {
  return new Promise((resolve) => {
    const c = spawn(ARC, ["hook", "opencode", event, "--agent", AGENT]);
    let out = "", err = "";
    c.stdout.on("data", (d) => (out += d));
    c.stderr.on("data", (d) => (err += d));
    c.on("error", () => resolve({ status: -1, out: "", err: "" }));
    c.on("close", (status) => resolve({ status, out, err }));
    c.stdin.on("error", () => {});
    c.stdin.end(JSON.stringify(input));
  });
}

export const ArcPlugin = async ({ client, directory }) => {
  const waiting = new Set();
  const tool = (input, args) => ({ session_id: input.sessionID, cwd: directory,
    tool_name: input.tool, tool_input: args });
  return {
    event: async ({ event }) => {
      if (event.type !== "session.idle") return;
      const id = event.properties.sessionID;
      if (waiting.has(id)) return;
      waiting.add(id);
      // in the background: OpenCode's event bus must not wait on it
      hook("wait", { session_id: id, cwd: directory }).then(async (r) => {
        waiting.delete(id);
        if (r.status === 0 && r.out.trim())
          await client.session.promptAsync({
            path: { id }, body: { parts: [{ type: "text", text: r.out }] },
          });
      }).catch(() => waiting.delete(id));
    },
    "tool.execute.before": async (input, output) => {
      const r = await hook("PreToolUse", tool(input, output.args));
      if (r.status === 2) throw new Error(r.err.trim() || "refused by arc");
    },
    "tool.execute.after": async (input, output) => {
      const r = await hook("PostToolUse", tool(input, {}));
      if (r.status === 0 && r.out.trim() && typeof output.output === "string")
        output.output += "\n\n" + r.out;
    },
  };
};
