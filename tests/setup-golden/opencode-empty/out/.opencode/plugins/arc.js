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

export const ArcPlugin = async ({ client }) => {
  const waiting = new Set();
  return {
    event: async ({ event }) => {
      if (event.type !== "session.idle") return;
      const id = event.properties.sessionID;
      if (waiting.has(id)) return;
      waiting.add(id);
      const r = await hook("wait", { session_id: id });
      waiting.delete(id);
      if (r.status === 0 && r.out.trim())
        await client.session.promptAsync({
          path: { id }, body: { parts: [{ type: "text", text: r.out }] },
        });
    },
    "tool.execute.before": async (input, output) => {
      const r = await hook("PreToolUse", { session_id: input.sessionID,
        tool_name: input.tool, tool_input: output.args });
      if (r.status === 2) throw new Error(r.err.trim() || "refused by arc");
    },
  };
};
