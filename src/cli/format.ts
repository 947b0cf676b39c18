/**
 * What a bench run measured and how numbers are written, shared by the table (bench.ts) and the
 * charts (svg.ts).
 */
import type { BenchCodec, BenchTransport, BenchVia } from './member';

export interface Result {
  transport: BenchTransport;
  /** hybrid only: the path its pair took, shm (one bus directory) or nats (one each, as on two hosts). */
  via?: BenchVia;
  codec: BenchCodec;
  payload: number;
  rtt_us: { p50: number; p99: number; p999: number; max: number };
  msgs_per_s: number;
  mb_per_s: number;
  cpu_ms: number;
  /**
   * CPU time of both processes (user+system) per unit of work: per round trip in the round-trip
   * phase; per message and per MB (10^6 payload bytes) in the throughput phase.
   */
  cpu_us: { per_round_trip: number; per_msg: number; per_mb: number };
}

/** What a row measured, as the table names it: the transport, and for hybrid its path ('hybrid/nats'). */
export function rowName(r: { transport: BenchTransport; via?: BenchVia }): string {
  return r.via === undefined ? r.transport : `${r.transport}/${r.via}`;
}

/** From this payload on, the table gives CPU per MB rather than per message. */
export const CPU_PER_MB_FROM = 65536;

/** A row's CPU cost in the table: per message, or per MB for large payloads. */
export function fmtCpuCost(r: Result): string {
  return r.payload >= CPU_PER_MB_FROM ? `${fmtUs(r.cpu_us.per_mb)}/MB` : `${fmtUs(r.cpu_us.per_msg)}/msg`;
}

export interface Machine {
  node: string;
  cpus: number;
  platform: string;
}

export function fmtBytes(n: number): string {
  if (n >= 2 ** 20 && n % 2 ** 20 === 0) return `${n / 2 ** 20} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} B`;
}

export function fmtNum(x: number): string {
  if (x >= 1e6) return `${(x / 1e6).toFixed(x >= 1e7 ? 1 : 2)}M`;
  if (x >= 1e4) return `${(x / 1e3).toFixed(x >= 1e5 ? 0 : 1)}k`;
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

/** A duration given in µs, in the unit that fits it: "9.3 µs", "12.6 ms", "1.20 s". */
export function fmtUs(us: number): string {
  if (us >= 1e6) return `${(us / 1e6).toFixed(2)} s`;
  if (us >= 1000) return `${fmtNum(us / 1000)} ms`;
  return `${fmtNum(us)} µs`;
}
