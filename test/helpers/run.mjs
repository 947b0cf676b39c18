// The test side of the conformance suite: start a fixture program as a user would (a plain
// `node program.mjs`, no IPC channel), collect the JSON lines it prints, and kill its whole
// process tree when it is done or runs over its time.
import net from 'node:net';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const FIXTURES = new URL('../fixtures/', import.meta.url);
const live = new Set();
let runs = 0;

// A test runner that dies must not leave workers behind.
process.on('exit', () => {
  for (const pid of live) killGroup(pid);
});

function killGroup(pid, signal = 'SIGKILL') {
  try {
    process.kill(-pid, signal);
  } catch {
    // the group is already gone
  }
}

/**
 * Runs test/fixtures/<file> with `args` under `transport` (env SHMBUS_TRANSPORT) on a bus name of
 * its own (env SHMBUS_TEST_BUS). Resolves { code, signal, lines, result, stdout, stderr, ms } once
 * the program exits; `result` is the `result` field of the line that has one. Rejects, after
 * killing the process group, if the program runs over `timeout` ms.
 */
export function run(file, { args = [], env = {}, transport, timeout = 20_000 } = {}) {
  const bus = `c${process.pid}_${++runs}`;
  const started = Date.now();
  const childEnv = { ...process.env, SHMBUS_TRANSPORT: transport ?? '', SHMBUS_TEST_BUS: bus, ...env };
  delete childEnv.NODE_TEST_CONTEXT; // the program is a user's program, not a test file
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [fileURLToPath(new URL(file, FIXTURES)), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // its own process group: one kill reaches every worker it forked
      env: childEnv,
    });
    live.add(child.pid);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (text) => (stdout += text));
    child.stderr.setEncoding('utf8').on('data', (text) => (stderr += text));
    const describe = () => `${file} ${args.join(' ')} on ${transport}\n--- stdout\n${stdout}\n--- stderr\n${stderr}`;
    const timer = setTimeout(() => {
      killGroup(child.pid);
      live.delete(child.pid);
      reject(new Error(`did not finish within ${timeout} ms: ${describe()}`));
    }, timeout);
    child.on('exit', (code, signal) => {
      const ms = Date.now() - started;
      // Workers it left behind still hold the pipes; give them a moment, then end them.
      const closed = new Promise((done) => child.once('close', done));
      const grace = new Promise((done) => setTimeout(done, 2000).unref());
      Promise.race([closed, grace]).then(() => {
        clearTimeout(timer);
        killGroup(child.pid);
        live.delete(child.pid);
        const lines = [];
        for (const line of stdout.split('\n')) {
          if (!line.startsWith('{')) continue;
          try {
            lines.push(JSON.parse(line));
          } catch {
            // a line that is not ours
          }
        }
        const withResult = lines.filter((l) => 'result' in l);
        resolve({ code, signal, ms, lines, result: withResult.at(-1)?.result, stdout, stderr, describe });
      });
    });
  });
}

/** Runs a fixture and returns its result, failing with its output when it printed none or did not exit 0. */
export async function resultOf(file, options) {
  const r = await run(file, options);
  if (r.result === undefined || r.code !== 0) {
    throw new Error(`exit code ${r.code}, signal ${r.signal}, no result or a failure: ${r.describe()}`);
  }
  return r.result;
}

/**
 * The transports under test: env SHMBUS_TEST_TRANSPORTS (comma-separated), else 'process', plus
 * 'shm' when a bus opens with it here, plus 'nats' when a NATS server answers on 127.0.0.1:4222
 * (always under CI, where a missing server then fails the suite).
 */
export async function transportsUnderTest() {
  const listed = process.env.SHMBUS_TEST_TRANSPORTS;
  if (listed) return listed.split(',').map((t) => t.trim()).filter(Boolean);
  const list = ['process'];
  try {
    const r = await run('probe.mjs', { transport: 'shm', timeout: 15_000 });
    if (r.result?.opened === true) list.push('shm');
  } catch {
    // shm does not work here
  }
  if (process.env.CI === 'true' || (await natsServerAnswers())) list.push('nats');
  return list;
}

function natsServerAnswers() {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port: 4222 });
    const done = (up) => {
      socket.destroy();
      resolve(up);
    };
    socket.setTimeout(2000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
