import { invalidArg } from './errors';
import { codecProblem, codecs, type CodecName } from './codec';
import { checkMemberId, clusterRole, hostToken, isMemberId, parseMemberId, processToken, show, type MemberId } from './ids';
import type { TransportName } from './transports/transport';
import type { NodeConnectionOptions } from '@nats-io/transport-node';

export interface OpenOptions {
  /** Bus name; members with the same name form one bus. Default 'default'. */
  name?: string;
  /** This member's id. Default: SHMBUS_ID, PM2's NODE_APP_INSTANCE, cluster.worker.id, 'primary' in a cluster primary, else `<host>-<pid>` (`<host>-<pid>-t<threadId>` in a worker thread; on nats and hybrid `<host>-<process token>-<pid>`, the token six hex digits of the process's own, as containers share pids). */
  id?: MemberId;
  /** 'auto' (default): with a `nats` section 'hybrid' where the native addon loads, else 'nats'; without one 'shm' where the addon loads, else 'process'. Env SHMBUS_TRANSPORT overrides. */
  transport?: 'auto' | TransportName;
  codec?: CodecName;
  /** Default timeout of request(), in ms. Default 30000. */
  requestTimeout?: number;
  /** Larger messages are refused with ERR_SHMBUS_TOO_LARGE. Default 64 MiB. */
  maxMessageSize?: number;
  /** Per target: bytes accepted but not yet taken by it. Default 64 MiB. */
  maxQueueBytes?: number;
  /** Options for transport 'shm' (and the local links of 'hybrid'). */
  shm?: ShmOptions;
  /** Options for transport 'process'. */
  process?: ProcessOptions;
  /** Options for transport 'nats' (and 'hybrid'): shmbus's own, and the NATS client's connect() options. */
  nats?: NatsOptions;
}

/** Tuning of the shared-memory transport (checked at open()). */
export interface ShmOptions {
  /** The root of bus directories. Default $SHMBUS_DIR, else $XDG_RUNTIME_DIR/shmbus-<uid> or <tmpdir>/shmbus-<uid>. */
  dir?: string;
  /** Bytes per ring: a power of two from 4096 to 2^30. Default 1 MiB. */
  ringSize?: number;
  /** µs a member keeps polling its rings after its last traffic; 0 never polls. Default 50. */
  spinUs?: number;
}

/** Tuning of the process transport. */
export interface ProcessOptions {
  /** How long a forked member waits for its parent's answer before it goes on alone, in ms. Default 1000. */
  handshakeTimeout?: number;
}

/** The NATS transport's own options; every other key goes to the NATS client's connect(). */
export interface NatsOptions extends NodeConnectionOptions {
  /** How often a member says it is alive, in ms. Default 500. */
  heartbeatInterval?: number;
  /** Silence after which a member counts as gone, in ms (at least 2 × heartbeatInterval). Default 2000. */
  presenceTimeout?: number;
  /** How long open() collects answers from the members already present, in ms. Default 150. */
  joinWindow?: number;
  /** How long open() waits for a subscribed but silent holder of this id, in ms. Default max(1000, presenceTimeout). */
  claimTimeout?: number;
  /** The root of every subject. Default 'shmbus'. */
  subjectPrefix?: string;
}

export interface ResolvedOptions {
  name: string;
  id: MemberId;
  transport: 'auto' | TransportName;
  codec: CodecName;
  requestTimeout: number;
  maxMessageSize: number;
  maxQueueBytes: number;
  shm: Record<string, unknown>;
  process: Record<string, unknown>;
  nats: Record<string, unknown>;
  /** Whether open() was given a `nats` section ('auto' then means a transport that spans hosts). */
  natsGiven: boolean;
}

const BUS_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
export const DEFAULT_MAX_MESSAGE_SIZE = 64 * 2 ** 20;
export const DEFAULT_MAX_QUEUE_BYTES = 64 * 2 ** 20;
const TRANSPORTS = ['auto', 'shm', 'process', 'nats', 'hybrid'];
const KNOWN = new Set(['name', 'id', 'transport', 'codec', 'requestTimeout', 'maxMessageSize', 'maxQueueBytes', 'shm', 'process', 'nats']);

function positiveInt(value: unknown, what: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw invalidArg(`${what} must be a positive integer, got ${show(value)}`);
  }
  return value;
}

function section(value: unknown, what: string): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalidArg(`${what} must be an object, got ${show(value)}`);
  }
  return value as Record<string, unknown>;
}

/** The default id: `spansHosts` (nats, hybrid) adds a part of the process's own, as containers on several hosts share pids. */
function defaultId(spansHosts: boolean): MemberId {
  const env = process.env;
  if (env.SHMBUS_ID !== undefined && env.SHMBUS_ID !== '') {
    const id = parseMemberId(env.SHMBUS_ID);
    if (id === undefined) throw invalidArg(`SHMBUS_ID must be a member id (an integer or a name), got ${show(env.SHMBUS_ID)}`);
    return id;
  }
  // PM2's instance number and the cluster role name the process: its main thread has that id.
  const thread = workerThreadId();
  if (thread === undefined && env.NODE_APP_INSTANCE !== undefined && /^\d{1,10}$/.test(env.NODE_APP_INSTANCE)) {
    const id = Number(env.NODE_APP_INSTANCE);
    if (isMemberId(id)) return id;
  }
  const role = thread === undefined ? clusterRole() : { primary: false };
  if (role.worker) return role.worker.id;
  if (role.primary) return 'primary';
  return `${hostToken()}-${spansHosts ? `${processToken()}-` : ''}${process.pid}${thread === undefined ? '' : `-t${thread}`}`;
}

/** This worker thread's threadId, or undefined on the main thread. */
function workerThreadId(): number | undefined {
  const threads = require('node:worker_threads') as typeof import('node:worker_threads');
  return threads.isMainThread ? undefined : threads.threadId;
}

export function resolveOptions(options: unknown): ResolvedOptions {
  const o = section(options, 'open() options') as OpenOptions;
  for (const key of Object.keys(o)) {
    if (!KNOWN.has(key)) throw invalidArg(`unknown option ${show(key)}; the options are ${[...KNOWN].join(', ')}`);
  }
  const name = o.name ?? 'default';
  if (typeof name !== 'string' || !BUS_NAME.test(name)) {
    throw invalidArg(`name must match ${BUS_NAME} (letters, digits, '_', '.', '-'), got ${show(name)}`);
  }
  if (name === '.' || name === '..') throw invalidArg(`name can't be ${show(name)}`);

  // A bad option is refused even where SHMBUS_TRANSPORT overrides it.
  let transport = o.transport ?? 'auto';
  if (typeof transport !== 'string' || !TRANSPORTS.includes(transport)) {
    throw invalidArg(`transport must be one of ${TRANSPORTS.join(', ')}, got ${show(transport)}`);
  }
  const envTransport = process.env.SHMBUS_TRANSPORT;
  if (envTransport !== undefined && envTransport !== '') {
    if (!TRANSPORTS.includes(envTransport)) {
      throw invalidArg(`SHMBUS_TRANSPORT must be one of ${TRANSPORTS.join(', ')}, got ${show(envTransport)}`);
    }
    transport = envTransport as ResolvedOptions['transport'];
  }
  const spansHosts = transport === 'nats' || transport === 'hybrid' || (transport === 'auto' && o.nats !== undefined);
  const id = o.id === undefined ? defaultId(spansHosts) : checkMemberId(o.id);

  const codec = o.codec ?? 'v8';
  if (typeof codec !== 'string' || !Object.hasOwn(codecs, codec)) {
    throw invalidArg(`codec must be one of ${Object.keys(codecs).join(', ')}, got ${show(codec)}`);
  }
  const problem = codecProblem(codec);
  if (problem !== undefined) throw invalidArg(`the ${codec} codec can't run here: ${problem}; choose codec 'json' or 'raw' (every member of a bus uses the same codec)`);

  return {
    name,
    id,
    transport,
    codec,
    requestTimeout: positiveInt(o.requestTimeout, 'requestTimeout', 30_000),
    maxMessageSize: positiveInt(o.maxMessageSize, 'maxMessageSize', DEFAULT_MAX_MESSAGE_SIZE),
    maxQueueBytes: positiveInt(o.maxQueueBytes, 'maxQueueBytes', DEFAULT_MAX_QUEUE_BYTES),
    shm: section(o.shm, 'shm'),
    process: section(o.process, 'process'),
    nats: section(o.nats, 'nats'),
    natsGiven: o.nats !== undefined,
  };
}
