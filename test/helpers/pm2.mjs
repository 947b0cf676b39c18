// PM2 for real, with a home of its own (no other PM2 is touched) and a bus directory of its own.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = path.join(root, 'node_modules', '.bin', 'pm2');

/**
 * A scratch directory `work` with PM2_HOME and SHMBUS_DIR under it; envOf(work) (added to this
 * process's environment; undefined removes a variable) is what PM2 and the applications it
 * starts get. run(...args) runs the pm2 command line and returns its stdout; done() kills the
 * daemon and removes `work`.
 */
export function pm2Home(envOf = () => ({})) {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-pm2-'));
  const all = { ...process.env, PM2_HOME: path.join(work, 'pm2'), SHMBUS_DIR: path.join(work, 'bus'), ...envOf(work) };
  // The test runner's own variables are not the application's.
  delete all.NODE_TEST_CONTEXT;
  delete all.SHMBUS_ID;
  for (const [k, v] of Object.entries(all)) if (v === undefined) delete all[k];
  const run = (...args) => execFileSync(bin, args, { env: all, cwd: work, stdio: 'pipe', timeout: 30_000 }).toString();
  return {
    work,
    run,
    /** What PM2 knows of each process: [instance, status, exec_mode]. */
    described: () => JSON.parse(run('jlist')).map((p) => [p.pm2_env.NODE_APP_INSTANCE, p.pm2_env.status, p.pm2_env.exec_mode]),
    done() {
      try {
        run('kill');
      } catch {
        // the daemon may not have started
      }
      fs.rmSync(work, { recursive: true, force: true });
    },
  };
}

/** Polls `check` every 100 ms until it returns something other than undefined, or `timeout` passes (then undefined). */
export async function until(check, timeout) {
  const end = Date.now() + timeout;
  while (Date.now() < end) {
    const value = check();
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return undefined;
}
