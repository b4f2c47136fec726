// Waiting helpers shared by the browser specs (dashboard.spec.mjs,
// security.spec.mjs): conditions with deadlines instead of fixed sleeps.
export const sleep = ms => new Promise(r => setTimeout(r, ms));

// Poll fn until it returns something truthy (and return that), or throw
// after ms milliseconds naming `what`.
export async function until(what, fn, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out: ' + what);
    await sleep(50);
  }
}
