/**
 * `shmbus bench`: round-trip latency and one-way throughput of every transport, side by side with
 * what users have today (Node's child.send() on its default channel, and a raw Unix socket).
 *
 * This process only plans, starts one driver process per transport and codec (see member.ts),
 * collects what the drivers print and reports it: a table on stdout, or JSON with --json.
 * Progress always goes to stderr.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { EXIT_UNAVAILABLE, benchNodeArgs, type BenchCodec, type BenchTransport, type BenchVia, type DriverLine, type MemberConfig } from './member';
import { CPU_PER_MB_FROM, fmtBytes, fmtCpuCost, fmtNum, fmtUs, rowName, type Machine, type Result } from './format';
import { renderSvg } from './svg';

export type { Machine, Result };

export const TRANSPORTS: readonly BenchTransport[] = ['shm', 'process', 'nats', 'hybrid', 'ipc', 'uds', 'natsraw', 'floor'];
export const CODECS: readonly BenchCodec[] = ['raw', 'v8', 'json'];
/** What users have today, that the shmbus transports are measured against. */
const REFERENCES = new Set<BenchTransport>(['ipc', 'uds', 'natsraw']);
/** What the shm transport is measured against: its own rings with no JS (native/floor.h). */
const FLOOR = 'floor';
/** Run before the others, so that every later progress line can carry its ratios. */
const runsFirst = (t: BenchTransport): boolean => REFERENCES.has(t) || t === FLOOR;
/** hybrid is measured on each of its paths: a pair of one host (shm), and a pair of two (nats). */
const HYBRID_VIAS: readonly BenchVia[] = ['shm', 'nats'];
/** The transport each hybrid path is measured against: the one that path is. */
const VIA_REF: Record<BenchVia, BenchTransport> = { shm: 'shm', nats: 'nats' };
const MAX_PAYLOAD = 64 * 2 ** 20 - 4096;

export interface BenchOptions {
  transports: BenchTransport[];
  /** Whether the user named the transports (then one that can't run is an error). */
  transportsGiven: boolean;
  payloads: number[];
  codecs: BenchCodec[];
  /** Seconds per measured phase (round trips, then throughput) of each combination. */
  duration: number;
  quick: boolean;
  json: boolean;
  svg?: string;
  spinUs?: number;
  /** The 1-minute load average when the run started (set by runBench, shown in the table). */
  loadAtStart?: number;
}

export class UsageError extends Error {}

export const BENCH_HELP = `Usage: shmbus bench [options]

Measures, between two Node.js processes on this machine, for each transport, codec and payload:
round-trip latency (ping-pong: p50, p99, p99.9, max), one-way throughput with backpressure
respected and every message checked (messages/s, MB/s), and the CPU time both processes used.

  --transports LIST  shm, process, nats, hybrid, ipc, uds, natsraw, floor (default
                       shm,process,ipc,uds, and nats when a NATS server answers on 127.0.0.1:4222)
                       shm, process, nats, hybrid: shmbus transports (public API, sendMessage);
                       hybrid: two pairs, rows hybrid/shm (both members in one bus
                       directory, as on one host: its shm links) and hybrid/nats (each in a
                       bus directory of its own, as on two hosts: through NATS); each pair
                       is checked to take that path; hybrid/shm rows get their ratio to
                       shm, hybrid/nats rows to nats. In --json, hybrid rows carry
                       via: 'shm' or 'nats'
                       ipc: child.send()/process.send() on Node's default JSON channel (codec json)
                       uds: a node:net Unix socket, 4-byte length-prefixed frames (codec raw)
                       natsraw: the NATS client itself on 127.0.0.1:4222 (codec raw): round
                       trips as request/reply; throughput a publish loop with a flush every
                       1000 messages (or 8 MiB); payloads over the server's max_payload: n/a
                       floor (not in the default list): the shm transport's own rings, records,
                       handshake and doorbell rules, driven from native code alone in both
                       processes (no JS, no event loop), busy-polling (yielding the CPU after
                       5 µs with nothing read, as shm does), each message copied out of the
                       ring once and checked (codec raw): what shm would do with no JS on this
                       machine; shm rows get their ratio to it. It never sleeps, so it needs
                       two idle cores: on a busy machine it waits its turn behind every other
                       process (its numbers can then be worse than shm's, which parks and is
                       woken by its doorbell)
  --payloads LIST    payload sizes in bytes, 8 to 64 MiB (default 64,1024,65536,1048576)
  --codecs LIST      raw, v8, json for the shmbus transports (default raw,v8)
  --duration S       seconds for each measured phase of each combination (default 2)
  --quick            short phases (0.5 s): the default run takes well under a minute
  --spin-us N        the shm transport's polling window in µs (shm: { spinUs: N }); 0 = never spin
  --json             print the results as JSON on stdout (nothing else goes to stdout)
  --svg FILE         also write bar charts (p50 round trip, msgs/s, MB/s) to FILE
  --help             this text

Progress goes to stderr. Exit status: 0 done, 1 a measurement failed (or a transport named in
--transports can't run here), 2 bad options.
`;

function list(value: string, what: string): string[] {
  const items = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (items.length === 0) throw new UsageError(`${what} needs a comma-separated list`);
  return [...new Set(items)];
}

export function parseBenchArgs(args: readonly string[]): BenchOptions | 'help' {
  const o: BenchOptions = {
    transports: ['shm', 'process', 'ipc', 'uds'],
    transportsGiven: false,
    payloads: [64, 1024, 65536, 1048576],
    codecs: ['raw', 'v8'],
    duration: 2,
    quick: false,
    json: false,
  };
  let durationGiven = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg : arg.slice(0, eq);
    const value = (): string => {
      if (eq >= 0) return arg.slice(eq + 1);
      const next = args[++i];
      if (next === undefined || next.startsWith('--')) throw new UsageError(`${name} needs a value`);
      return next;
    };
    const flag = (): void => {
      if (eq >= 0) throw new UsageError(`${name} takes no value`);
    };
    switch (name) {
      case '--help':
        return 'help';
      case '--transports':
        o.transports = list(value(), name).map((t) => {
          if (!TRANSPORTS.includes(t as BenchTransport)) throw new UsageError(`unknown transport ${JSON.stringify(t)}; the transports are ${TRANSPORTS.join(', ')}`);
          return t as BenchTransport;
        });
        o.transportsGiven = true;
        break;
      case '--payloads':
        o.payloads = list(value(), name).map((p) => {
          const n = /^\d+$/.test(p) ? Number(p) : NaN;
          if (!(n >= 8 && n <= MAX_PAYLOAD)) throw new UsageError(`a payload size must be a whole number of bytes from 8 to ${MAX_PAYLOAD}, got ${JSON.stringify(p)}`);
          return n;
        });
        break;
      case '--codecs':
        o.codecs = list(value(), name).map((c) => {
          if (!CODECS.includes(c as BenchCodec)) throw new UsageError(`unknown codec ${JSON.stringify(c)}; the codecs are ${CODECS.join(', ')}`);
          return c as BenchCodec;
        });
        break;
      case '--duration': {
        const v = value();
        const s = Number(v);
        if (v.trim() === '' || !(s > 0 && s <= 3600)) throw new UsageError(`--duration must be a number of seconds above 0 and at most 3600, got ${JSON.stringify(v)}`);
        o.duration = s;
        durationGiven = true;
        break;
      }
      case '--quick':
        flag();
        o.quick = true;
        break;
      case '--json':
        flag();
        o.json = true;
        break;
      case '--svg': {
        const v = value();
        if (v === '') throw new UsageError('--svg needs a file name');
        o.svg = v;
        break;
      }
      case '--spin-us': {
        const v = value();
        const n = /^\d+$/.test(v) ? Number(v) : NaN;
        if (!(n >= 0 && n <= 1_000_000)) throw new UsageError(`--spin-us must be a whole number of µs from 0 to 1000000, got ${JSON.stringify(v)}`);
        o.spinUs = n;
        break;
      }
      default:
        throw new UsageError(`unknown option ${JSON.stringify(name)}`);
    }
  }
  if (o.quick && durationGiven) throw new UsageError('--quick and --duration both set the duration: use one');
  if (o.quick) o.duration = 0.5;
  o.payloads.sort((a, b) => a - b);
  return o;
}

/** The codecs a transport runs with: the references have one each. */
export function codecsOf(t: BenchTransport, codecs: readonly BenchCodec[]): BenchCodec[] {
  if (t === 'ipc') return ['json'];
  if (t === 'uds' || t === 'natsraw' || t === FLOOR) return ['raw'];
  return [...codecs];
}

export function machine(): Machine {
  return { node: process.version, cpus: os.cpus().length, platform: `${process.platform}-${process.arch}` };
}

const round = (x: number, digits: number): number => {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
};

function toResult(line: Extract<DriverLine, { type: 'result' }>): Result {
  const us = (ns: number): number => round(ns / 1000, 3);
  const msgsPerS = line.msgs / line.seconds;
  return {
    transport: line.transport,
    ...(line.via !== undefined ? { via: line.via } : {}),
    codec: line.codec,
    payload: line.payload,
    rtt_us: { p50: us(line.rtt_ns.p50), p99: us(line.rtt_ns.p99), p999: us(line.rtt_ns.p999), max: us(line.rtt_ns.max) },
    msgs_per_s: Math.round(msgsPerS),
    mb_per_s: round((msgsPerS * line.payload) / 1e6, 2),
    cpu_ms: round(line.cpu_ms, 1),
    cpu_us: {
      per_round_trip: round((line.rtt_cpu_ms * 1000) / line.rtt_ns.count, 3),
      per_msg: round((line.tp_cpu_ms * 1000) / line.msgs, 3),
      per_mb: round((line.tp_cpu_ms * 1000) / ((line.msgs * line.payload) / 1e6), 1),
    },
  };
}

type PairOutcome = { status: 'ok' } | { status: 'unavailable'; reason: string } | { status: 'failed'; reason: string };

/** Runs one driver (one transport and codec, every payload); reports each result as it comes. */
/** A payload a transport can't carry, reported as n/a. */
export interface NotMeasured {
  transport: BenchTransport;
  codec: BenchCodec;
  payload: number;
  reason: string;
}

function runPair(cfg: MemberConfig, onResult: (r: Result) => void, onNotMeasured: (n: NotMeasured) => void): Promise<PairOutcome> {
  return new Promise((resolve) => {
    const script = path.join(__dirname, 'member.js');
    const child = spawn(process.execPath, [...benchNodeArgs(), script, 'driver', JSON.stringify(cfg)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let outcome: PairOutcome | null = null;
    // A driver that prints nothing for this long is stuck (its own stall checks take 60 s).
    const limitMs = 120_000 + (4 * cfg.warmupMs + cfg.rttMs + cfg.tpMs) * 2;
    let timer = setTimeout(stuck, limitMs);
    function stuck(): void {
      outcome ??= { status: 'failed', reason: `the driver printed nothing for ${Math.round(limitMs / 1000)} s` };
      child.kill('SIGKILL');
    }
    const lines = readline.createInterface({ input: child.stdout! });
    lines.on('line', (text) => {
      clearTimeout(timer);
      timer = setTimeout(stuck, limitMs);
      let line: DriverLine;
      try {
        line = JSON.parse(text);
      } catch {
        process.stderr.write(`${cfg.transport}/${cfg.codec}: ${text}\n`);
        return;
      }
      if (line.type === 'result') onResult(toResult(line));
      else if (line.type === 'na') onNotMeasured({ transport: line.transport, codec: line.codec, payload: line.payload, reason: line.reason });
      else if (line.type === 'unavailable') outcome ??= { status: 'unavailable', reason: line.reason };
      else if (line.type === 'failed') outcome ??= { status: 'failed', reason: line.reason };
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (!outcome && code === EXIT_UNAVAILABLE) outcome = { status: 'unavailable', reason: 'the transport could not open' };
      if (!outcome && code !== 0) outcome = { status: 'failed', reason: `the driver exited with ${signal ?? `code ${code}`}` };
      resolve(outcome ?? { status: 'ok' });
    });
  });
}

const label = (r: { transport: BenchTransport; via?: BenchVia; codec: string; payload: number }): string => `${rowName(r)}/${r.codec}/${r.payload}`;

/** "3.1x faster than ipc", "1.4x slower than uds", "about as fast as uds" (x: how many times better r is than the reference). */
function fmtRatio(x: number, ref: string): string {
  if (!Number.isFinite(x) || x <= 0) return '';
  const times = (y: number): string => (y >= 10 ? `${y.toFixed(0)}x` : `${y.toFixed(1)}x`);
  if (x >= 0.95 && x < 1.05) return `about as fast as ${ref}`;
  if (x >= 1) return `${times(x)} faster than ${ref}`;
  return `${times(1 / x)} slower than ${ref}`;
}

type Reference = 'ipc' | 'uds' | 'natsraw' | typeof FLOOR;

function refOf(results: readonly Result[], transport: Reference, payload: number): Result | undefined {
  return results.find((r) => r.transport === transport && r.payload === payload);
}

/** r against each reference measured at its payload: "3.1x faster than ipc, 1.4x slower than uds". */
function ratios(results: readonly Result[], r: Result, pick: (x: Result) => number, lowerIsBetter: boolean): string {
  // The raw NATS client is what the nats transport is measured against.
  const refs: readonly Reference[] = r.transport === 'nats' ? ['ipc', 'uds', 'natsraw'] : ['ipc', 'uds'];
  return refRatios(results, r, refs, pick, lowerIsBetter);
}

function refRatios(results: readonly Result[], r: Result, refs: readonly Reference[], pick: (x: Result) => number, lowerIsBetter: boolean): string {
  const parts: string[] = [];
  for (const ref of refs) {
    if (r.transport === ref) continue;
    const b = refOf(results, ref, r.payload);
    if (!b) continue;
    parts.push(fmtRatio(lowerIsBetter ? pick(b) / pick(r) : pick(r) / pick(b), ref));
  }
  return parts.filter(Boolean).join(', ');
}

/** shm against its floor at r's payload ('' for other transports, or with no floor measured). */
function floorRatio(results: readonly Result[], r: Result, pick: (x: Result) => number, lowerIsBetter: boolean): string {
  return r.transport === 'shm' ? refRatios(results, r, [FLOOR], pick, lowerIsBetter) : '';
}

/** A hybrid row against the transport its path is, at r's codec and payload ('' for others, or with that one not measured). */
function viaRatio(results: readonly Result[], r: Result, pick: (x: Result) => number, lowerIsBetter: boolean): string {
  if (r.via === undefined) return '';
  const ref = VIA_REF[r.via];
  const b = results.find((x) => x.transport === ref && x.codec === r.codec && x.payload === r.payload);
  return b ? fmtRatio(lowerIsBetter ? pick(b) / pick(r) : pick(r) / pick(b), ref) : '';
}

export function progressLine(results: readonly Result[], r: Result): string {
  const both = (pick: (x: Result) => number, lowerIsBetter: boolean): string =>
    [ratios(results, r, pick, lowerIsBetter), floorRatio(results, r, pick, lowerIsBetter), viaRatio(results, r, pick, lowerIsBetter)].filter(Boolean).join(', ');
  const rtt = both((x) => x.rtt_us.p50, true);
  const tp = both((x) => x.msgs_per_s, false);
  return `${label(r)}: p50 ${fmtUs(r.rtt_us.p50)}${rtt ? ` (${rtt})` : ''}, p99 ${fmtUs(r.rtt_us.p99)}; ` +
    `${fmtNum(r.msgs_per_s)} msgs/s${tp ? ` (${tp})` : ''}, ${fmtNum(r.mb_per_s)} MB/s; cpu ${fmtNum(r.cpu_ms)} ms, ${fmtCpuCost(r)}`;
}

type Ratios = (r: Result, pick: (x: Result) => number, lowerIsBetter: boolean) => string;

/** One line per row: its round trip and messages/s against references, in words. */
function againstLines(rows: readonly Result[], ratiosOf: Ratios): string[] {
  const name = (r: Result): string => `${rowName(r)} ${r.codec} ${fmtBytes(r.payload)}`;
  const w = Math.max(...rows.map((r) => name(r).length));
  return rows.map((r) => {
    const rtt = ratiosOf(r, (x) => x.rtt_us.p50, true);
    const tp = ratiosOf(r, (x) => x.msgs_per_s, false);
    return `  ${name(r).padEnd(w)}  round trip ${rtt || '-'}; messages/s ${tp || '-'}`;
  });
}

export function renderTable(results: readonly Result[], m: Machine, o: BenchOptions, notMeasured: readonly NotMeasured[] = []): string {
  const rows: string[][] = [['transport', 'codec', 'payload', 'p50', 'p99', 'p99.9', 'max', 'msgs/s', 'MB/s', 'cpu ms', 'cpu cost']];
  for (const r of results) {
    rows.push([
      rowName(r),
      r.codec,
      fmtBytes(r.payload),
      fmtUs(r.rtt_us.p50),
      fmtUs(r.rtt_us.p99),
      fmtUs(r.rtt_us.p999),
      fmtUs(r.rtt_us.max),
      fmtNum(r.msgs_per_s),
      fmtNum(r.mb_per_s),
      fmtNum(r.cpu_ms),
      fmtCpuCost(r),
    ]);
  }
  for (const n of notMeasured) rows.push([rowName(n), n.codec, fmtBytes(n.payload), 'n/a', '', '', '', 'n/a', 'n/a', '', '']);
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const text = rows.map((row) => row.map((cell, c) => (c < 3 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ').trimEnd());
  const out = [
    `shmbus bench: node ${m.node}, ${m.platform}, ${m.cpus} CPUs${o.loadAtStart !== undefined ? `, load average ${o.loadAtStart.toFixed(2)} at the start` : ''}; ${o.duration} s per phase${o.quick ? ' (--quick)' : ''}${o.spinUs !== undefined ? `; shm spinUs ${o.spinUs}` : ''}`,
    'Round trip (p50 ... max): ping-pong between two processes, one message each way (shmbus: sendMessage',
    'to one member, echoed by its listener; ipc: child.send/process.send; uds: one write per frame).',
    'Throughput: one way, backpressure respected, every message counted and its sequence number checked.',
    'cpu ms: both processes, user+system, over both measured phases. MB = 10^6 payload bytes.',
    `cpu cost: both processes' CPU in the throughput phase per message (per MB from ${fmtBytes(CPU_PER_MB_FROM)} on).`,
    '',
    text[0],
    ...text.slice(1),
    ...notMeasured.map((n) => `n/a: ${rowName(n)} ${fmtBytes(n.payload)}: ${n.reason}`),
  ];
  const measured = results.filter((r) => !REFERENCES.has(r.transport) && r.transport !== FLOOR);
  if (measured.length > 0 && results.some((r) => REFERENCES.has(r.transport))) {
    const natsraw = results.some((r) => r.transport === 'natsraw') ? '; natsraw: the NATS client, for nats' : '';
    out.push('', `Against what users have today (ipc: child.send(); uds: a Unix socket${natsraw}), at the same payload:`);
    out.push(...againstLines(measured, (r, pick, lower) => ratios(results, r, pick, lower)));
  }
  const shm = results.filter((r) => floorRatio(results, r, (x) => x.msgs_per_s, false) !== '');
  if (shm.length > 0) {
    out.push('', 'Against its floor (floor: the same rings driven from native code alone, busy-polling), at the same payload:');
    out.push(...againstLines(shm, (r, pick, lower) => floorRatio(results, r, pick, lower)));
  }
  const hybrid = results.filter((r) => viaRatio(results, r, (x) => x.msgs_per_s, false) !== '');
  if (hybrid.length > 0) {
    out.push('', 'Against the transport of its path (hybrid/shm: shm; hybrid/nats: nats), at the same codec and payload:');
    out.push(...againstLines(hybrid, (r, pick, lower) => viaRatio(results, r, pick, lower)));
  }
  return out.join('\n') + '\n';
}

/** Whether a NATS server answers where the nats transport looks by default (127.0.0.1:4222). */
function natsAnswers(): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port: 4222 });
    const done = (up: boolean): void => {
      socket.destroy();
      resolve(up);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export async function runBench(o: BenchOptions): Promise<number> {
  const m = machine();
  let natsNote: string | undefined;
  if (!o.transportsGiven) {
    if (await natsAnswers()) o.transports.splice(o.transports.indexOf('process') + 1, 0, 'nats');
    else natsNote = "nats: not measured: no NATS server answers on 127.0.0.1:4222; start one (nats-server) and run again to add it";
  }
  const stamp = `${process.pid}-${Date.now().toString(36)}`;
  const warmupMs = Math.round(Math.min(1000, Math.max(100, o.duration * 250)));
  const phaseMs = Math.round(o.duration * 1000);
  const order = [...o.transports].sort((a, b) => Number(runsFirst(b)) - Number(runsFirst(a)));
  type Step = { transport: BenchTransport; codec: BenchCodec; via?: BenchVia };
  const plan = order.flatMap((t) =>
    codecsOf(t, o.codecs).flatMap((codec): Step[] => (t === 'hybrid' ? HYBRID_VIAS.map((via) => ({ transport: t, codec, via })) : [{ transport: t, codec }])),
  );
  const total = plan.length * o.payloads.length;
  const load = os.loadavg()[0];
  o.loadAtStart = load;
  process.stderr.write(`shmbus bench: ${total} combination${total === 1 ? '' : 's'}, ${o.duration} s per phase; node ${m.node}, ${m.platform}, ${m.cpus} CPUs, load average ${load.toFixed(2)}\n`);
  if (load > m.cpus / 2) process.stderr.write(`shmbus bench: this machine is busy (load ${load.toFixed(2)} on ${m.cpus} CPUs): expect noisy numbers, and polling that waits for a CPU\n`);
  const results: Result[] = [];
  const notMeasured: NotMeasured[] = [];
  let failed = false;
  let done = 0;
  const skipped = new Map<BenchTransport, string>();
  for (const { transport, codec, via } of plan) {
    if (skipped.has(transport)) continue;
    const name = rowName({ transport, via });
    process.stderr.write(`${name}/${codec}: starting\n`);
    const cfg: MemberConfig = {
      transport,
      codec,
      payloads: o.payloads,
      warmupMs,
      rttMs: phaseMs,
      tpMs: phaseMs,
      bus: `bench-${stamp}-${transport}-${codec}${via !== undefined ? `-${via}` : ''}`,
    };
    if (via !== undefined) cfg.via = via;
    if (o.spinUs !== undefined) cfg.spinUs = o.spinUs;
    const outcome = await runPair(cfg, (r) => {
      results.push(r);
      done++;
      process.stderr.write(`[${done}/${total}] ${progressLine(results, r)}\n`);
    }, (n) => {
      notMeasured.push(n);
      done++;
      process.stderr.write(`[${done}/${total}] ${label(n)}: n/a, ${n.reason}\n`);
    });
    if (outcome.status === 'unavailable') {
      process.stderr.write(`${transport}: skipped, it can't run here: ${outcome.reason}\n`);
      skipped.set(transport, outcome.reason);
      if (o.transportsGiven) failed = true;
    } else if (outcome.status === 'failed') {
      process.stderr.write(`${name}/${codec}: FAILED: ${outcome.reason}\n`);
      failed = true;
    }
  }
  // Report in the order the user asked for.
  const rank = (r: Result): number =>
    o.transports.indexOf(r.transport) * 1e12 + (r.via === undefined ? 0 : HYBRID_VIAS.indexOf(r.via)) * 1e11 + o.codecs.indexOf(r.codec) * 1e10 + r.payload;
  results.sort((a, b) => rank(a) - rank(b));
  if (o.svg) {
    fs.writeFileSync(o.svg, renderSvg(results, m, o));
    process.stderr.write(`wrote ${o.svg}\n`);
  }
  if (o.json) process.stdout.write(JSON.stringify({ machine: m, results, ...(notMeasured.length > 0 ? { notMeasured } : {}) }) + '\n');
  else {
    process.stdout.write(renderTable(results, m, o, notMeasured));
    for (const [t, reason] of skipped) process.stdout.write(`\n${t}: skipped, it can't run here: ${reason}\n`);
    if (natsNote) process.stdout.write(`\n${natsNote}\n`);
  }
  return failed ? 1 : 0;
}
