// Programs that the suites start as a user would (a plain `node program.mjs`, no IPC channel),
// each in a process group of its own so that one kill reaches every process it forked. Their
// stdout is read as JSON lines; whatever is still running when the test process exits is killed.
// Also the probes the suites share: whether shm runs here and whether a NATS server answers; a NATS
// server of a suite's own on another port; the error a promise rejects with.
import net from 'node:net';
import { existsSync } from 'node:fs';
import { execFileSync, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const live = new Set();
process.on('exit', () => {
  for (const p of live) p.kill();
});

/**
 * Starts `file` (a path or file: URL) with `args`; `env` is added to this process's environment
 * (minus the test runner's NODE_TEST_CONTEXT: the program is a user's program, not a test file).
 * `node` is the command line that runs it: this Node.js by default.
 * Returns { child, pid, lines, stdout, stderr, line(), exited, kill(), describe() }.
 */
export function program(file, { args = [], env = {}, name = '', node = [process.execPath] } = {}) {
  const path = file instanceof URL ? fileURLToPath(file) : file;
  const childEnv = { ...process.env, ...env };
  delete childEnv.NODE_TEST_CONTEXT;
  for (const [k, v] of Object.entries(childEnv)) if (v === undefined) delete childEnv[k];
  const child = spawn(node[0], [...node.slice(1), path, ...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: childEnv });
  const waiters = new Set();
  const wake = () => {
    for (const w of [...waiters]) w();
  };
  let buffered = '';
  const p = {
    child,
    pid: child.pid,
    lines: [],
    stdout: '',
    stderr: '',
    exit: undefined,
    describe: () => `${name || path} ${args.join(' ')}\n--- stdout\n${p.stdout}\n--- stderr\n${p.stderr}`,
    /** Resolves the first line `match` accepts; rejects if the program exits or `timeout` passes first. */
    line(match, timeout = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const found = p.lines.find(match);
          if (found !== undefined) return finish(() => resolve(found));
          if (p.exit) finish(() => reject(new Error(`the program exited (${p.exit.code ?? p.exit.signal}) without that line: ${p.describe()}`)));
        };
        const timer = setTimeout(() => finish(() => reject(new Error(`no such line within ${timeout} ms: ${p.describe()}`))), timeout);
        const finish = (then) => {
          clearTimeout(timer);
          waiters.delete(check);
          then();
        };
        waiters.add(check);
        check();
      });
    },
    /** Signals the whole process group. */
    kill(signal = 'SIGKILL') {
      try {
        process.kill(-child.pid, signal);
      } catch {
        // the group is gone already
      }
    },
  };
  p.exited = new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      p.exit = { code, signal };
      live.delete(p);
      resolve(p.exit);
      wake();
    }),
  );
  live.add(p);
  child.stdout.setEncoding('utf8').on('data', (text) => {
    p.stdout += text;
    buffered += text;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (!line.startsWith('{')) continue;
      try {
        p.lines.push(JSON.parse(line));
      } catch {
        continue; // a line that is not ours
      }
    }
    wake();
  });
  child.stderr.setEncoding('utf8').on('data', (text) => (p.stderr += text));
  return p;
}

/**
 * Keeps one CPU busy (a `for(;;){}` program) until the returned function is called: suites that
 * look for races run with the machine's other core taken, as a loaded machine would.
 */
export function busyCore() {
  const burner = program(new URL('../fixtures/busy.mjs', import.meta.url));
  return () => burner.kill();
}

/** Whether a TCP server answers on host:port within `timeout` ms. */
export function tcpAnswers(port, host = '127.0.0.1', timeout = 2000) {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (up) => {
      socket.destroy();
      resolve(up);
    };
    socket.setTimeout(timeout, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** The error `promise` rejects with; throws if it resolves. */
export async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

/** A TCP port on 127.0.0.1 that nothing listens on now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** The nats-server program (PATH or the usual places), or undefined. */
export function natsServerPath() {
  for (const p of ['/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server']) if (existsSync(p)) return p;
  try {
    return execFileSync('sh', ['-c', 'command -v nats-server'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** nats-servers started here, killed when the test process exits. */
const servers = new Set();
process.on('exit', () => {
  for (const s of servers) killGroup(s);
});

function killGroup(child) {
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // gone already
  }
}

/**
 * Starts a NATS server of the suite's own on 127.0.0.1:`port` (never the shared one on 4222), in
 * a process group of its own; resolves the child once the port answers.
 */
export async function startNatsServer(port) {
  const server = spawn(natsServerPath(), ['-a', '127.0.0.1', '-p', String(port)], { stdio: 'ignore', detached: true });
  servers.add(server);
  server.once('exit', () => servers.delete(server));
  for (let i = 0; i < 100; i++) {
    if (await tcpAnswers(port, '127.0.0.1', 1000)) return server;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  killGroup(server);
  throw new Error(`nats-server did not start on port ${port}`);
}

/** Kills a server startNatsServer() started; resolves once it has exited. */
export async function stopNatsServer(server) {
  if (server.exitCode !== null || server.signalCode !== null) return;
  const exited = new Promise((resolve) => server.once('exit', resolve));
  killGroup(server);
  await exited;
}

/** Whether a NATS server answers on 127.0.0.1:4222 (the suites' shared one). */
export const natsServerAnswers = () => tcpAnswers(4222);

let shmProbe;
/**
 * Whether a bus opens on the shm transport here (the addon loads, Linux), asked once per test
 * process in a program of its own. Under CI it must: a failure there throws.
 */
export function shmRuns() {
  shmProbe ??= (async () => {
    const p = program(new URL('../fixtures/probe.mjs', import.meta.url), { env: { SHMBUS_TRANSPORT: 'shm', SHMBUS_TEST_BUS: `probe${process.pid}` } });
    const timer = setTimeout(() => p.kill(), 15_000);
    await p.exited;
    clearTimeout(timer);
    const opened = p.lines.some((l) => l.result?.opened === true);
    if (!opened && process.env.CI === 'true') throw new Error(`the shm transport must run under CI: ${p.describe()}`);
    return opened;
  })();
  return shmProbe;
}
