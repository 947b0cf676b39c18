/**
 * The two processes of one benchmark pair. `shmbus bench` spawns the driver (A) for each
 * transport and codec; the driver starts its peer (B) the way a user would for that transport,
 * then, for each payload size, measures round trips by ping-pong and one-way throughput, and
 * prints one JSON line per result on stdout.
 *
 *   node member.js driver '<config json>'
 *   node member.js peer '<config json>'
 *
 * shm, nats: B is spawned with stdio pipes and no IPC channel; both open the bus.
 * hybrid:    as shm; via 'shm' both in one bus directory, via 'nats' each in one of its own
 *            (as on two hosts), and the driver checks that the pair took that path.
 * process:   A opens the bus (it is the hub) and forks B, which joins through its IPC channel.
 * ipc:       A forks B; strings go through child.send() / process.send() on the JSON channel.
 * uds:       A listens on a Unix socket, spawns B, which connects.
 * natsraw:   A and B each connect to the NATS server (127.0.0.1:4222) with the client itself.
 * floor:     A makes a bus directory and spawns B; each hands the whole run to the addon's
 *            floor() (native/floor.h), which blocks: no JS and no event loop while it measures.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createHistogram, performance, type RecordableHistogram } from 'node:perf_hooks';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { BusLink, IpcLink, NatsRawLink, UdsLink, SENT, NOT_SENT, type Ctl, type Data, type Link, type RawNats } from './link';

export type BenchTransport = 'shm' | 'process' | 'nats' | 'hybrid' | 'ipc' | 'uds' | 'natsraw' | 'floor';
export type BenchCodec = 'raw' | 'v8' | 'json';
/** The path a hybrid pair is made to take. */
export type BenchVia = 'shm' | 'nats';

export interface MemberConfig {
  transport: BenchTransport;
  codec: BenchCodec;
  payloads: number[];
  warmupMs: number;
  rttMs: number;
  tpMs: number;
  spinUs?: number;
  bus: string;
  sock?: string;
  /** floor: the bus directory the driver made; hybrid via 'nats': the root of each member's own. */
  dir?: string;
  /** hybrid: the path the pair must take. */
  via?: BenchVia;
}

/** What the driver prints, one JSON line each, on stdout. */
export type DriverLine =
  | { type: 'result'; transport: BenchTransport; via?: BenchVia; codec: BenchCodec; payload: number; rtt_ns: { p50: number; p99: number; p999: number; max: number; count: number }; msgs: number; seconds: number; cpu_ms: number; rtt_cpu_ms: number; tp_cpu_ms: number }
  | { type: 'unavailable'; reason: string }
  /** A payload the transport can't carry (natsraw: over the server's max_payload): not measured. */
  | { type: 'na'; transport: BenchTransport; codec: BenchCodec; payload: number; reason: string }
  | { type: 'failed'; reason: string };

/** Exit code of a driver whose transport can't run here (not a failure of the benchmark). */
export const EXIT_UNAVAILABLE = 3;

/** Data values carry a sequence number: the first 4 bytes of a Buffer, the first 8 digits of a string. */
const SEQ_BASE = 10_000_000;
const SEQ_DIGITS = 8;
/** How often a sending loop lets the event loop run (so the transport's I/O and acks go on). */
const YIELD_MS = 2;
/** A phase that makes no progress for this long fails the run. */
const STALL_MS = 60_000;

const usesStrings = (c: MemberConfig): boolean => c.transport === 'ipc' || (c.transport !== 'uds' && c.transport !== 'natsraw' && c.codec !== 'raw');
const cpuMs = (u: NodeJS.CpuUsage): number => (u.user + u.system) / 1000;
const immediate = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function out(line: DriverLine): void {
  process.stdout.write(JSON.stringify(line) + '\n');
}

class BenchFailure extends Error {}

// ---------------------------------------------------------------------------------------------
// Opening the link on each side.

async function openBus(cfg: MemberConfig, id: number): Promise<import('../bus').Bus> {
  const { open } = require('../index') as typeof import('../index');
  const options: import('../options').OpenOptions = { name: cfg.bus, transport: cfg.transport as 'shm' | 'process' | 'nats' | 'hybrid', codec: cfg.codec, id };
  if ((cfg.transport === 'shm' || cfg.transport === 'hybrid') && cfg.spinUs !== undefined) options.shm = { spinUs: cfg.spinUs };
  // Each member of a hybrid pair via nats in a bus directory of its own: two hosts, to hybrid.
  if (cfg.transport === 'hybrid' && cfg.via === 'nats') options.shm = { ...options.shm, dir: path.join(cfg.dir!, `host${id}`) };
  return open(options);
}

/**
 * Extra node flags for the benchmark's processes, for profiling them:
 * SHMBUS_BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=prof' (NODE_OPTIONS refuses --cpu-prof).
 */
export function benchNodeArgs(): string[] {
  return (process.env.SHMBUS_BENCH_NODE_ARGS ?? '').split(/\s+/).filter((a) => a !== '');
}

/** A connection of the NATS client itself, to where the nats transport looks by default. */
async function rawNats(): Promise<RawNats> {
  const { connect } = require('@nats-io/transport-node') as { connect(o: Record<string, unknown>): Promise<RawNats> };
  return connect({ servers: 'nats://127.0.0.1:4222' });
}

function peerArgs(cfg: MemberConfig): string[] {
  return [path.join(__dirname, 'member.js'), 'peer', JSON.stringify(cfg)];
}

function watchPeer(child: ChildProcess, state: { done: boolean }): void {
  child.on('exit', (code, signal) => {
    if (state.done) return;
    out({ type: 'failed', reason: `the peer process exited early (${signal ?? `code ${code}`})` });
    process.exit(1);
  });
}

async function driverLink(cfg: MemberConfig, state: { done: boolean }): Promise<{ link: Link; child: ChildProcess }> {
  switch (cfg.transport) {
    case 'shm':
    case 'nats':
    case 'hybrid': {
      if (cfg.via === 'nats') {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-bench-hosts-'));
        process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
        cfg = { ...cfg, dir };
      }
      let bus;
      try {
        bus = await openBus(cfg, 0);
      } catch (err) {
        out({ type: 'unavailable', reason: (err as Error).message });
        process.exit(EXIT_UNAVAILABLE);
      }
      const child = spawn(process.execPath, [...benchNodeArgs(), ...peerArgs(cfg)], { stdio: ['pipe', 'pipe', 'inherit'] });
      watchPeer(child, state);
      await bus.waitFor(1, { timeout: 20_000 });
      const via = bus.stats().peers['1']?.via;
      if (cfg.via !== undefined && via !== cfg.via) throw new BenchFailure(`the ${cfg.transport} pair was to link via ${cfg.via}, but it links via ${via}`);
      return { link: new BusLink(bus, 1, cfg.codec), child };
    }
    case 'process': {
      const bus = await openBus(cfg, 0);
      // The channel a cluster primary gives its workers when it opens a bus first.
      const child = fork(peerArgs(cfg)[0], peerArgs(cfg).slice(1), { stdio: ['pipe', 'pipe', 'inherit', 'ipc'], serialization: 'advanced', execArgv: benchNodeArgs() });
      watchPeer(child, state);
      await bus.waitFor(1, { timeout: 20_000 });
      return { link: new BusLink(bus, 1, cfg.codec), child };
    }
    case 'ipc': {
      const child = fork(peerArgs(cfg)[0], peerArgs(cfg).slice(1), { stdio: ['pipe', 'pipe', 'inherit', 'ipc'], execArgv: benchNodeArgs() });
      watchPeer(child, state);
      const link = new IpcLink(child, true);
      await expectCtl(link, 'ready');
      return { link, child };
    }
    case 'natsraw': {
      let nc;
      try {
        nc = await rawNats();
      } catch (err) {
        out({ type: 'unavailable', reason: `the NATS client can't reach a server on 127.0.0.1:4222: ${(err as Error).message}` });
        process.exit(EXIT_UNAVAILABLE);
      }
      const link = new NatsRawLink(nc, `${cfg.bus}.a`, `${cfg.bus}.b`);
      await nc.flush();
      const child = spawn(process.execPath, [...benchNodeArgs(), ...peerArgs(cfg)], { stdio: ['pipe', 'pipe', 'inherit'] });
      watchPeer(child, state);
      await expectCtl(link, 'ready');
      return { link, child };
    }
    case 'uds': {
      const sock = path.join(os.tmpdir(), `shmbus-bench-${process.pid}-${Math.random().toString(36).slice(2, 8)}.sock`);
      const server = net.createServer();
      await new Promise<void>((resolve, reject) => server.once('error', reject).listen(sock, resolve));
      const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
      const child = spawn(process.execPath, [...benchNodeArgs(), ...peerArgs({ ...cfg, sock })], { stdio: ['pipe', 'pipe', 'inherit'] });
      watchPeer(child, state);
      const conn = await accepted;
      server.close();
      fs.rmSync(sock, { force: true });
      return { link: new UdsLink(conn), child };
    }
    case 'floor':
      throw new BenchFailure('the floor has no JS link: see floorDriver()');
  }
}

async function peerLink(cfg: MemberConfig): Promise<Link> {
  switch (cfg.transport) {
    case 'shm':
    case 'nats':
    case 'hybrid':
    case 'process': {
      const bus = await openBus(cfg, 1);
      await bus.waitFor(0, { timeout: 20_000 });
      return new BusLink(bus, 0, cfg.codec);
    }
    case 'ipc':
      return new IpcLink(process, false);
    case 'natsraw': {
      const nc = await rawNats();
      const link = new NatsRawLink(nc, `${cfg.bus}.b`, `${cfg.bus}.a`);
      await nc.flush();
      return link;
    }
    case 'uds': {
      const conn = net.connect(cfg.sock!);
      await new Promise<void>((resolve, reject) => conn.once('connect', resolve).once('error', reject));
      return new UdsLink(conn);
    }
    case 'floor':
      throw new BenchFailure('the floor has no JS link: see floorPeer()');
  }
}

/** The next control message of kind `op` (others are a protocol error). */
function expectCtl(link: Link, op: string): Promise<Ctl> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new BenchFailure(`no '${op}' from the peer within ${STALL_MS / 1000} s`)), STALL_MS);
    link.onCtl = (c) => {
      clearTimeout(timer);
      link.onCtl = () => undefined;
      if (c.op === op) resolve(c);
      else reject(new BenchFailure(`expected '${op}' from the peer, got '${c.op}'`));
    };
  });
}

// ---------------------------------------------------------------------------------------------
// Payloads with sequence numbers.

interface Payload {
  size: number;
  /** The value for sequence number `seq` (a Buffer is reused: its first bytes are rewritten). */
  make(seq: number): Data;
  /** The sequence number in a received value, or -1 if its size is wrong. */
  seqOf(v: Data): number;
}

function payloadFor(cfg: MemberConfig, size: number): Payload {
  if (usesStrings(cfg)) {
    const tail = 'x'.repeat(size - SEQ_DIGITS);
    return {
      size,
      make: (seq) => String(SEQ_BASE + (seq % 90_000_000)) + tail,
      seqOf: (v) => ((v as string).length === size ? Number((v as string).slice(0, SEQ_DIGITS)) - SEQ_BASE : -1),
    };
  }
  const buf = Buffer.alloc(size, 0x78);
  return {
    size,
    make: (seq) => {
      buf.writeUInt32LE(seq >>> 0, 0);
      return buf;
    },
    seqOf: (v) => ((v as Buffer).length === size ? (v as Buffer).readUInt32LE(0) : -1),
  };
}

// ---------------------------------------------------------------------------------------------
// The driver.

/**
 * How long a ping-pong phase goes on: at least `ms` and `rounds` round trips, but no longer than
 * `maxMs` (where the rounds would take longer).
 */
interface Phase {
  ms: number;
  rounds: number;
  maxMs: number;
}

/**
 * The warm-up before a measured phase: enough round trips for the JIT to have compiled the path
 * of every transport (a code path as long as a bus's takes a few thousand; measured within a
 * short time alone, it would still be running unoptimised), within four times `ms`.
 */
const warmup = (ms: number): Phase => ({ ms, rounds: 10_000, maxMs: 4 * ms });
const measured = (ms: number): Phase => ({ ms, rounds: 5, maxMs: Infinity });

/** Whether a phase that began at `t0` has done enough after `count` round trips. */
const phaseDone = (phase: Phase, t0: number, now: number, count: number): boolean =>
  count >= 5 && ((now - t0 >= phase.ms && count >= phase.rounds) || now - t0 >= phase.maxMs);

/** Round trips as requests (natsraw): ask, await the answer, record, ask again. */
async function requests(link: Link & { request(v: Data): Promise<Data> }, p: Payload, phase: Phase, hist: RecordableHistogram | null): Promise<number> {
  const ping = p.make(0);
  const t0 = performance.now();
  let count = 0;
  for (;;) {
    const t = performance.now();
    const answer = await link.request(ping);
    const now = performance.now();
    if (p.seqOf(answer) !== 0) throw new BenchFailure(`a ${p.size}-byte request was answered wrong (${answer.length} bytes)`);
    if (hist) hist.record(Math.max(1, Math.round((now - t) * 1e6)));
    count++;
    if (phaseDone(phase, t0, now, count)) return count;
  }
}

/** Ping-pong for a phase: send, wait for the echo, record the round trip in ns, send again. */
function pingPong(link: Link, p: Payload, phase: Phase, hist: RecordableHistogram | null): Promise<number> {
  if (link.request) return requests(link as Link & { request(v: Data): Promise<Data> }, p, phase, hist);
  const ping = p.make(0);
  return new Promise((resolve, reject) => {
    let count = 0;
    const t0 = performance.now();
    let t = performance.now();
    const stall = setInterval(() => {
      if (performance.now() - t > STALL_MS) {
        clearInterval(stall);
        reject(new BenchFailure(`a ${p.size}-byte ping got no answer within ${STALL_MS / 1000} s`));
      }
    }, 1000);
    link.onData = (v) => {
      const now = performance.now();
      if (p.seqOf(v) !== 0) {
        clearInterval(stall);
        link.onData = () => undefined;
        return reject(new BenchFailure(`a ${p.size}-byte ping came back wrong (${typeof v === 'string' ? v.length : v.length} bytes)`));
      }
      if (hist) hist.record(Math.max(1, Math.round((now - t) * 1e6)));
      count++;
      if (phaseDone(phase, t0, now, count)) {
        clearInterval(stall);
        link.onData = () => undefined;
        return resolve(count);
      }
      t = performance.now();
      link.trySend(ping);
    };
    t = performance.now();
    link.trySend(ping);
  });
}

/** Sends numbered values for `ms` as fast as the link takes them, then 'end'; resolves the peer's answer. */
async function flood(link: Link, p: Payload, ms: number): Promise<{ msgs: number; seconds: number; peer: Ctl }> {
  await link.sendCtl({ op: 'count', size: p.size });
  await expectCtl(link, 'counting');
  const t0 = performance.now();
  const deadline = t0 + ms;
  let seq = 0;
  let lastYield = t0;
  for (;;) {
    // Time is looked at every 8 values: it costs as much as a small send.
    for (let i = 0; i < 8; i++) {
      const r = link.trySend(p.make(seq));
      if (r !== NOT_SENT) seq++;
      if (r !== SENT) {
        await link.writable();
        lastYield = performance.now();
      }
    }
    const now = performance.now();
    if (now >= deadline) break;
    if (now - lastYield >= YIELD_MS) {
      await immediate();
      lastYield = performance.now();
    }
  }
  const answer = expectCtl(link, 'counted');
  await link.sendCtl({ op: 'end', count: seq });
  const peer = await answer;
  const seconds = (performance.now() - t0) / 1000;
  if (peer.ok !== true) throw new BenchFailure(`throughput check failed at the receiver: ${peer.error}`);
  return { msgs: seq, seconds, peer };
}

// ---------------------------------------------------------------------------------------------
// The floor: both sides in native code (native/floor.h).

function floorAddon(): import('../native').NativeAddon {
  const loaded = (require('../native') as typeof import('../native')).loadNative();
  if ('reason' in loaded) {
    out({ type: 'unavailable', reason: loaded.reason });
    process.exit(EXIT_UNAVAILABLE);
  }
  return loaded.addon;
}

function floorOptions(cfg: MemberConfig, role: 'drive' | 'serve'): import('../native').NativeFloorOptions {
  const { DEFAULT_RING_SIZE } = require('../transports/shm') as typeof import('../transports/shm');
  const { DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_QUEUE_BYTES } = require('../options') as typeof import('../options');
  return {
    role,
    dir: cfg.dir!,
    id: role === 'drive' ? '0' : '1',
    peer: role === 'drive' ? '1' : '0',
    ringSize: DEFAULT_RING_SIZE,
    maxMessageSize: DEFAULT_MAX_MESSAGE_SIZE,
    maxQueueBytes: DEFAULT_MAX_QUEUE_BYTES,
  };
}

async function floorDriver(cfg: MemberConfig): Promise<void> {
  const addon = floorAddon();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-floor-'));
  const withDir = { ...cfg, dir };
  const child = spawn(process.execPath, [...benchNodeArgs(), ...peerArgs(withDir)], { stdio: ['ignore', 'ignore', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let failure: string;
  try {
    failure = addon.floor({ ...floorOptions(withDir, 'drive'), payloads: cfg.payloads, warmupMs: cfg.warmupMs, rttMs: cfg.rttMs, tpMs: cfg.tpMs }, (r) => {
      out({
        type: 'result',
        transport: 'floor',
        codec: cfg.codec,
        payload: r.payload,
        rtt_ns: { p50: r.p50, p99: r.p99, p999: r.p999, max: r.max, count: r.count },
        msgs: r.msgs,
        seconds: r.seconds,
        cpu_ms: r.rttCpuMs + r.tpCpuMs,
        rtt_cpu_ms: r.rttCpuMs,
        tp_cpu_ms: r.tpCpuMs,
      });
    });
  } finally {
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    if (child.exitCode === null && child.signalCode === null) await exited;
    clearTimeout(timer);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (failure !== '') throw new BenchFailure(`floor: ${failure}`);
  process.exit(0);
}

function floorPeer(cfg: MemberConfig): void {
  const failure = floorAddon().floor(floorOptions(cfg, 'serve'), () => undefined);
  if (failure !== '') process.stderr.write(`shmbus bench floor peer: ${failure}\n`);
  process.exit(failure === '' ? 0 : 1);
}

async function driver(cfg: MemberConfig): Promise<void> {
  if (cfg.transport === 'floor') return floorDriver(cfg);
  const state = { done: false };
  const { link, child } = await driverLink(cfg, state);
  for (const size of cfg.payloads) {
    if (link.maxData !== undefined && size > link.maxData) {
      out({ type: 'na', transport: cfg.transport, codec: cfg.codec, payload: size, reason: `over the server's max_payload (${link.maxData} bytes)` });
      continue;
    }
    const p = payloadFor(cfg, size);
    await link.sendCtl({ op: 'echo', size });
    await expectCtl(link, 'echoing');
    await pingPong(link, p, warmup(cfg.warmupMs), null);

    const answer = expectCtl(link, 'cpu');
    await link.sendCtl({ op: 'cpu' });
    const peerCpu0 = cpuMs((await answer).cpu as NodeJS.CpuUsage);
    const cpu0 = cpuMs(process.cpuUsage());

    const hist = createHistogram();
    await pingPong(link, p, measured(cfg.rttMs), hist);
    const cpu1 = cpuMs(process.cpuUsage());
    const peerAnswer = expectCtl(link, 'cpu');
    await link.sendCtl({ op: 'cpu' });
    const peerCpu1 = cpuMs((await peerAnswer).cpu as NodeJS.CpuUsage);

    const tp = await flood(link, p, cfg.tpMs);
    const cpu2 = cpuMs(process.cpuUsage());
    const peerCpu2 = cpuMs(tp.peer.cpu as NodeJS.CpuUsage);

    const rttCpu = cpu1 - cpu0 + (peerCpu1 - peerCpu0);
    const tpCpu = cpu2 - cpu1 + (peerCpu2 - peerCpu1);
    out({
      type: 'result',
      transport: cfg.transport,
      ...(cfg.via !== undefined ? { via: cfg.via } : {}),
      codec: cfg.codec,
      payload: size,
      rtt_ns: { p50: hist.percentile(50), p99: hist.percentile(99), p999: hist.percentile(99.9), max: hist.max, count: hist.count },
      msgs: tp.msgs,
      seconds: tp.seconds,
      cpu_ms: rttCpu + tpCpu,
      rtt_cpu_ms: rttCpu,
      tp_cpu_ms: tpCpu,
    });
  }
  state.done = true;
  const exited = new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      process.stderr.write(`shmbus bench: the ${cfg.transport} peer did not quit within 5 s; killing it\n`);
      child.kill('SIGKILL');
      resolve();
    }, 5000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  await link.sendCtl({ op: 'quit' });
  await exited;
  await link.close().catch(() => undefined);
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------
// The peer: echoes in 'echo' mode, counts and checks sequence numbers in 'count' mode.

async function peer(cfg: MemberConfig): Promise<void> {
  if (cfg.transport === 'floor') return floorPeer(cfg);
  // Leave with the driver, whatever happens to it.
  if (process.stdin) process.stdin.on('end', () => process.exit(1)).resume();
  process.on('disconnect', () => process.exit(1));
  const link = await peerLink(cfg);
  let p: Payload | null = null;
  let expected = 0;
  let error: string | null = null;
  const echo = (v: Data): void => {
    link.trySend(v);
  };
  const count = (v: Data): void => {
    const seq = p!.seqOf(v);
    if (seq !== expected % (usesStrings(cfg) ? 90_000_000 : 2 ** 32) && error === null) {
      error = seq < 0 ? `message ${expected} has the wrong size` : `message ${expected} carries sequence number ${seq}`;
    }
    expected++;
  };
  link.onCtl = (c) => {
    void (async () => {
      switch (c.op) {
        case 'echo':
          p = payloadFor(cfg, c.size as number);
          link.onData = echo;
          return link.sendCtl({ op: 'echoing' });
        case 'cpu':
          return link.sendCtl({ op: 'cpu', cpu: process.cpuUsage() });
        case 'count':
          p = payloadFor(cfg, c.size as number);
          expected = 0;
          error = null;
          link.onData = count;
          return link.sendCtl({ op: 'counting' });
        case 'end': {
          const cpu = process.cpuUsage();
          link.onData = () => undefined;
          if (error === null && expected !== c.count) error = `${expected} messages arrived, ${c.count} were sent`;
          return link.sendCtl({ op: 'counted', ok: error === null, error, count: expected, cpu });
        }
        case 'quit':
          await link.close().catch(() => undefined);
          process.exit(0);
      }
    })().catch((err) => {
      process.stderr.write(`shmbus bench peer: ${(err as Error).stack}\n`);
      process.exit(1);
    });
  };
  if (cfg.transport === 'ipc' || cfg.transport === 'natsraw') await link.sendCtl({ op: 'ready' });
}

if (require.main === module) {
  // The benchmark names each transport and id itself: the environment must not override them.
  delete process.env.SHMBUS_TRANSPORT;
  delete process.env.SHMBUS_ID;
  const [role, json] = process.argv.slice(2);
  const cfg = JSON.parse(json) as MemberConfig;
  const run = role === 'driver' ? driver(cfg) : peer(cfg);
  run.catch((err) => {
    if (role === 'driver') {
      out({ type: 'failed', reason: err instanceof BenchFailure ? err.message : String((err as Error)?.stack ?? err) });
      process.exit(1);
    }
    process.stderr.write(`shmbus bench peer: ${(err as Error)?.stack ?? err}\n`);
    process.exit(1);
  });
}
