// The test side of the conformance suite: start a fixture program as a user would (a plain
// `node program.mjs`, no IPC channel), collect the JSON lines it prints, and kill its whole
// process tree when it is done or runs over its time.
import { program, shmRuns, natsServerAnswers } from './spawn.mjs';

const FIXTURES = new URL('../fixtures/', import.meta.url);
let runs = 0;

/**
 * Runs test/fixtures/<file> with `args` under `transport` (env SHMBUS_TRANSPORT) on a bus name of
 * its own (env SHMBUS_TEST_BUS). Resolves { code, signal, lines, result, stdout, stderr, ms } once
 * the program exits; `result` is the `result` field of the line that has one. Rejects, after
 * killing the process group, if the program runs over `timeout` ms.
 */
export async function run(file, { args = [], env = {}, transport, timeout = 20_000 } = {}) {
  const bus = `c${process.pid}_${++runs}`;
  const started = Date.now();
  const p = program(new URL(file, FIXTURES), { args, env: { SHMBUS_TRANSPORT: transport ?? '', SHMBUS_TEST_BUS: bus, ...env }, name: `${file} on ${transport}` });
  let timer;
  const overran = new Promise((resolve) => (timer = setTimeout(resolve, timeout, 'overran')));
  const outcome = await Promise.race([p.exited, overran]);
  clearTimeout(timer);
  if (outcome === 'overran') {
    p.kill();
    throw new Error(`did not finish within ${timeout} ms: ${p.describe()}`);
  }
  const ms = Date.now() - started;
  // Workers it left behind still hold the pipes; give them a moment, then end them.
  const closed = new Promise((done) => p.child.once('close', done));
  let grace;
  await Promise.race([closed, new Promise((done) => (grace = setTimeout(done, 2000)))]);
  clearTimeout(grace);
  p.kill();
  const withResult = p.lines.filter((l) => 'result' in l);
  return { code: p.exit.code, signal: p.exit.signal, ms, lines: p.lines, result: withResult.at(-1)?.result, stdout: p.stdout, stderr: p.stderr, describe: p.describe };
}

/** Runs a fixture and returns its result, failing with its output when it printed none or did not exit 0. */
export async function resultOf(file, options) {
  const r = await run(file, options);
  if (r.result === undefined || r.code !== 0) {
    throw new Error(`exit code ${r.code}, signal ${r.signal}, no result or a failure: ${r.describe()}`);
  }
  return r.result;
}

/** Why a suite left out the transports that need a NATS server. */
export const NO_NATS = 'no NATS server on 127.0.0.1:4222: start one (`nats-server -a 127.0.0.1`) to run the suite on nats and hybrid';

/**
 * The transports under test: env SHMBUS_TEST_TRANSPORTS (comma-separated), else 'process', plus
 * 'shm' when a bus opens with it here, plus 'nats' when a NATS server answers on 127.0.0.1:4222
 * (always under CI, where a missing server then fails the suite), and with `hybrid` also 'hybrid'
 * there where shm runs.
 */
export async function transportsUnderTest({ hybrid = false } = {}) {
  const listed = process.env.SHMBUS_TEST_TRANSPORTS;
  if (listed) return listed.split(',').map((t) => t.trim()).filter(Boolean);
  const list = ['process'];
  const shm = await shmRuns();
  if (shm) list.push('shm');
  if (process.env.CI === 'true' || (await natsServerAnswers())) {
    list.push('nats');
    if (hybrid && shm) list.push('hybrid');
  }
  return list;
}
