#!/usr/bin/env node
// Broadcasts from one of four socket.io servers (node:cluster workers) to N socket.io-client
// clients spread over all four, carried by shmbus/socket.io on shm and by
// @socket.io/cluster-adapter (the cluster primary relaying over the IPC channels), one after the
// other in one run, alternating, R runs each. Reports the median run of each: broadcasts/s and
// deliveries/s (broadcasts × N), and the p50 and p99 delivery latency (emit on the server to the
// 'message' on a client) of paced broadcasts.
//
//   node bench/socketio.mjs [--clients N] [--runs R] [--seconds S] [--json]
//
// Throughput: the server emits batches of 50 broadcasts, each batch followed by a broadcast with
// client acks that resolves once every client has all before it (the clients' connections are in
// order): as fast as the cluster delivers, never more in flight than a batch. Latency: one
// broadcast, then its acks, then the next. The clients live in one process of their own.
import cluster from 'node:cluster';
import { fork } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import os from 'node:os';

const ADAPTERS = ['shmbus', 'cluster-adapter'];
const SERVERS = 4;
const BATCH = 50;
const now = () => performance.timeOrigin + performance.now();
const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
const median = (list) => [...list].sort((a, b) => a - b)[Math.floor(list.length / 2)];

if (cluster.isWorker) await server();
else if (process.argv[2] === '--clients-process') await clients();
else await main();

function options() {
  const o = { clients: 100, runs: 3, seconds: 2, json: false };
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const key = args[i].replace(/^--/, '');
    if (key === 'json') o.json = true;
    else if (key in o && i + 1 < args.length && Number(args[i + 1]) > 0) o[key] = Number(args[++i]);
    else {
      process.stderr.write(`usage: node bench/socketio.mjs [--clients N] [--runs R] [--seconds S] [--json]\n`);
      process.exit(2);
    }
  }
  return o;
}

async function main() {
  const o = options();
  // Once for the whole run: it relays every worker's messages. (shmbus's setupPrimary() does
  // nothing on shm.)
  (await import('@socket.io/cluster-adapter')).setupPrimary();
  cluster.setupPrimary({ exec: fileURLToPath(import.meta.url), args: [] });
  const runs = Object.fromEntries(ADAPTERS.map((a) => [a, []]));
  for (let r = 0; r < o.runs; r++) {
    for (const adapter of r % 2 === 0 ? ADAPTERS : [...ADAPTERS].reverse()) {
      process.stderr.write(`run ${r + 1}/${o.runs}: ${adapter}\n`);
      runs[adapter].push(await runOnce(adapter, o));
    }
  }
  const summary = Object.fromEntries(
    Object.entries(runs).map(([adapter, list]) => [
      adapter,
      { broadcastsPerS: median(list.map((x) => x.broadcastsPerS)), deliveriesPerS: median(list.map((x) => x.deliveriesPerS)), p50Ms: median(list.map((x) => x.p50Ms)), p99Ms: median(list.map((x) => x.p99Ms)), runs: list },
    ]),
  );
  const machine = { cpus: os.cpus().length, arch: os.arch(), model: os.cpus()[0]?.model, load1: os.loadavg()[0], node: process.version };
  if (o.json) {
    process.stdout.write(`${JSON.stringify({ clients: o.clients, servers: SERVERS, machine, summary })}\n`);
    return;
  }
  const [a, b] = ADAPTERS.map((x) => summary[x]);
  const row = (name, s) => `${name.padEnd(34)}${String(Math.round(s.broadcastsPerS)).padStart(13)}${String(Math.round(s.deliveriesPerS)).padStart(15)}${s.p50Ms.toFixed(2).padStart(10)}${s.p99Ms.toFixed(2).padStart(10)}`;
  process.stdout.write(
    [
      `socket.io: broadcasts from 1 of ${SERVERS} servers to ${o.clients} clients; medians of ${o.runs} runs`,
      `${machine.cpus} CPUs ${machine.arch} (${machine.model}), load ${machine.load1.toFixed(2)}, Node ${machine.node}`,
      '',
      `${'adapter'.padEnd(34)}${'broadcasts/s'.padStart(13)}${'deliveries/s'.padStart(15)}${'p50 ms'.padStart(10)}${'p99 ms'.padStart(10)}`,
      row('shmbus/socket.io (shm)', a),
      row('@socket.io/cluster-adapter', b),
      `${'ratio shmbus / cluster-adapter'.padEnd(34)}${(a.broadcastsPerS / b.broadcastsPerS).toFixed(2).padStart(13)}${''.padStart(15)}${(a.p50Ms / b.p50Ms).toFixed(2).padStart(10)}${(a.p99Ms / b.p99Ms).toFixed(2).padStart(10)}`,
      '',
    ].join('\n'),
  );
}

/** Four servers on `adapter`, the clients' process, the two phases; everything ended after. */
async function runOnce(adapter, o) {
  const bus = `bench-sio-${process.pid}-${Date.now()}`;
  const workers = Array.from({ length: SERVERS }, () => cluster.fork({ BENCH_ADAPTER: adapter, BENCH_BUS: bus, SHMBUS_TRANSPORT: 'shm' }));
  const ports = await Promise.all(workers.map((w) => new Promise((resolve) => w.on('message', (m) => m?.bench === 'ready' && resolve(m.port)))));
  const children = fork(fileURLToPath(import.meta.url), ['--clients-process'], { env: { ...process.env, BENCH_PORTS: ports.join(','), BENCH_CLIENTS: String(o.clients) } });
  const ask = (target, cmd, arg) =>
    new Promise((resolve) => {
      const onMessage = (m) => m?.bench === cmd && (target.off('message', onMessage), resolve(m.value));
      target.on('message', onMessage);
      target.send({ bench: cmd, arg });
    });
  try {
    await new Promise((resolve) => children.once('message', resolve));
    const { broadcasts, ms } = await ask(workers[0], 'throughput', { seconds: o.seconds });
    // Every client got every broadcast (a check, not a measure).
    const received = await ask(children, 'received');
    if (received !== broadcasts * o.clients) throw new Error(`${adapter}: ${received} deliveries of ${broadcasts} broadcasts to ${o.clients} clients`);
    await ask(workers[0], 'latency', { seconds: o.seconds });
    const latencies = (await ask(children, 'latencies')).sort((x, y) => x - y);
    return { broadcastsPerS: (broadcasts * 1000) / ms, deliveriesPerS: (broadcasts * o.clients * 1000) / ms, p50Ms: quantile(latencies, 0.5), p99Ms: quantile(latencies, 0.99) };
  } finally {
    children.kill('SIGKILL');
    await Promise.all(workers.map((w) => new Promise((resolve) => (w.once('exit', resolve), w.send({ bench: 'close' })))));
  }
}

async function server() {
  const { Server } = await import('socket.io');
  const httpServer = http.createServer();
  const io = new Server(httpServer);
  const adapter = process.env.BENCH_ADAPTER;
  if (adapter === 'shmbus') io.adapter((await import('shmbus/socket.io')).createAdapter({ bus: { name: process.env.BENCH_BUS } }));
  else io.adapter((await import('@socket.io/cluster-adapter')).createAdapter());
  const synced = () => io.timeout(30_000).emitWithAck('sync');
  const phases = {
    async throughput({ seconds }) {
      let broadcasts = 0;
      const start = now();
      while (now() - start < seconds * 1000) {
        for (let i = 0; i < BATCH; i++) io.emit('m', broadcasts++);
        await synced();
      }
      return { broadcasts, ms: now() - start };
    },
    async latency({ seconds }) {
      const start = now();
      while (now() - start < seconds * 1000) {
        io.emit('lat', now());
        await synced();
      }
    },
    async close() {
      await io.close();
      process.exit(0);
    },
  };
  process.on('message', async (m) => {
    if (phases[m?.bench]) process.send({ bench: m.bench, value: await phases[m.bench](m.arg) });
  });
  // exclusive: each worker its own port, so the clients can be spread evenly.
  await new Promise((resolve) => httpServer.listen({ port: 0, host: '127.0.0.1', exclusive: true }, resolve));
  while ((await io.of('/').adapter.serverCount()) < SERVERS) await new Promise((resolve) => setTimeout(resolve, 10));
  process.send({ bench: 'ready', port: httpServer.address().port });
}

async function clients() {
  const { io: connect } = await import('socket.io-client');
  const ports = process.env.BENCH_PORTS.split(',');
  let received = 0;
  const latencies = [];
  const sockets = Array.from({ length: Number(process.env.BENCH_CLIENTS) }, (_, i) => {
    const socket = connect(`http://127.0.0.1:${ports[i % ports.length]}`, { transports: ['websocket'], reconnection: false, forceNew: true });
    socket.on('m', () => received++);
    socket.on('lat', (sent) => latencies.push(now() - sent));
    socket.on('sync', (cb) => cb());
    return socket;
  });
  await Promise.all(sockets.map((s) => new Promise((resolve) => s.once('connect', resolve))));
  process.on('message', (m) => {
    if (m?.bench === 'received') process.send({ bench: 'received', value: received });
    if (m?.bench === 'latencies') process.send({ bench: 'latencies', value: latencies });
  });
  process.send({ bench: 'connected' });
}
