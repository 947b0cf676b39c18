// `shmbus bench`: the JSON that other programs read, and the usage errors. No speed assertions:
// speed targets live in the benchmark, never in a timed test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { shmRuns } from './helpers/spawn.mjs';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'dist', 'cli', 'index.js');
const require = createRequire(import.meta.url);

function shmbus(args, timeout = 110_000) {
  return spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', timeout });
}

/** shm joins the run where the addon loads and a bus opens (under CI it must). */
const shmWorks = shmRuns;

test('bench --json prints one result per transport, codec and payload, and nothing else', async () => {
  const transports = ['process', 'ipc', 'uds'];
  if (await shmWorks()) transports.unshift('shm');
  const payloads = [64, 65536];
  const r = shmbus(['bench', '--json', '--quick', '--transports', transports.join(','), '--payloads', payloads.join(',')]);
  assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}\n${r.stderr}`);
  assert.match(r.stderr, /\[\d+\/\d+\]/, 'progress lines go to stderr');

  const out = JSON.parse(r.stdout); // the whole of stdout is one JSON document
  assert.deepEqual(Object.keys(out).sort(), ['machine', 'results']);
  assert.equal(out.machine.node, process.version);
  assert.equal(out.machine.cpus, os.cpus().length);
  assert.equal(out.machine.platform, `${process.platform}-${process.arch}`);

  const expected = [];
  for (const t of transports) {
    const codecs = t === 'ipc' ? ['json'] : t === 'uds' ? ['raw'] : ['raw', 'v8'];
    for (const c of codecs) for (const p of payloads) expected.push(`${t}/${c}/${p}`);
  }
  const got = out.results.map((x) => `${x.transport}/${x.codec}/${x.payload}`);
  assert.deepEqual([...got].sort(), [...expected].sort());

  for (const x of out.results) {
    assert.deepEqual(Object.keys(x).sort(), ['codec', 'cpu_ms', 'cpu_us', 'mb_per_s', 'msgs_per_s', 'payload', 'rtt_us', 'transport']);
    assert.deepEqual(Object.keys(x.rtt_us).sort(), ['max', 'p50', 'p99', 'p999']);
    assert.deepEqual(Object.keys(x.cpu_us).sort(), ['per_mb', 'per_msg', 'per_round_trip']);
    // Per MB is per message scaled by the payload (both from the throughput phase's CPU time).
    assert.ok(Math.abs(x.cpu_us.per_mb - (x.cpu_us.per_msg * 1e6) / x.payload) <= 0.01 * x.cpu_us.per_mb + 0.1, JSON.stringify(x));
    for (const v of [...Object.values(x.rtt_us), ...Object.values(x.cpu_us), x.msgs_per_s, x.mb_per_s, x.cpu_ms]) {
      assert.ok(typeof v === 'number' && Number.isFinite(v) && v > 0, `${x.transport}/${x.codec}/${x.payload}: ${JSON.stringify(x)}`);
    }
    assert.ok(x.rtt_us.p50 <= x.rtt_us.p99 && x.rtt_us.p99 <= x.rtt_us.p999 && x.rtt_us.p999 <= x.rtt_us.max);
  }
});

test('bench --transports floor: rows of its own (codec raw), and shm against it in the table', async (t) => {
  if (!(await shmWorks())) return t.skip('the shm transport does not run here');
  const r = shmbus(['bench', '--json', '--quick', '--transports', 'floor,shm', '--codecs', 'raw', '--payloads', '64,65536']);
  assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}\n${r.stderr}`);
  const out = JSON.parse(r.stdout);
  assert.deepEqual(out.results.map((x) => `${x.transport}/${x.codec}/${x.payload}`), ['floor/raw/64', 'floor/raw/65536', 'shm/raw/64', 'shm/raw/65536']);
  for (const x of out.results) {
    for (const v of [...Object.values(x.rtt_us), x.msgs_per_s, x.mb_per_s, x.cpu_ms]) assert.ok(Number.isFinite(v) && v > 0, JSON.stringify(x));
    assert.ok(x.rtt_us.p50 <= x.rtt_us.p99 && x.rtt_us.p99 <= x.rtt_us.p999 && x.rtt_us.p999 <= x.rtt_us.max, JSON.stringify(x));
  }

  const table = shmbus(['bench', '--quick', '--transports', 'floor,shm', '--codecs', 'raw', '--payloads', '64']);
  assert.equal(table.status, 0, `exit ${table.status} ${table.signal ?? ''}\n${table.stderr}`);
  assert.match(table.stdout, /^floor\s+raw\s+64 B/m);
  const lines = table.stdout.split('\n');
  const at = lines.findIndex((l) => l.startsWith('Against its floor'));
  assert.ok(at > 0, table.stdout);
  const ratio = '(\\d+(\\.\\d)?x (faster|slower) than|about as fast as)';
  assert.match(lines[at + 1], new RegExp(`^  shm raw 64 B\\s+round trip ${ratio} floor; messages/s ${ratio} floor$`));
  assert.equal(lines[at + 2], '');
});

/** The server the nats transport and natsraw look for by default, if one answers: its max_payload. */
async function natsMaxPayload() {
  try {
    const { connect } = require('@nats-io/transport-node');
    const nc = await connect({ servers: 'nats://127.0.0.1:4222', timeout: 2000 });
    const max = nc.info.max_payload;
    await nc.close();
    return max;
  } catch (err) {
    if (process.env.CI === 'true') throw err;
    return undefined;
  }
}

test('bench --transports natsraw: the NATS client itself, as rows of their own; a payload over the server\'s max_payload is n/a, not a failure', async (t) => {
  const max = await natsMaxPayload();
  if (max === undefined) return t.skip('no NATS server answers on 127.0.0.1:4222');
  const over = 2 * max;
  const r = shmbus(['bench', '--json', '--quick', '--transports', 'natsraw,nats', '--codecs', 'raw', '--payloads', `64,${over}`]);
  assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}\n${r.stderr}`);
  const out = JSON.parse(r.stdout);
  assert.deepEqual(out.results.map((x) => `${x.transport}/${x.codec}/${x.payload}`), ['natsraw/raw/64', 'nats/raw/64', `nats/raw/${over}`]);
  for (const x of out.results) assert.ok(x.msgs_per_s > 0 && x.rtt_us.p50 > 0, JSON.stringify(x));
  assert.equal(out.notMeasured.length, 1);
  const { reason, ...notMeasured } = out.notMeasured[0];
  assert.deepEqual(notMeasured, { transport: 'natsraw', codec: 'raw', payload: over });
  assert.match(reason, new RegExp(`max_payload \\(${max} bytes\\)`));
});

test('bench --transports hybrid: a pair of one host (hybrid/shm) and a pair of two (hybrid/nats), each checked to take its path', async (t) => {
  if (!(await shmWorks())) return t.skip('the shm transport does not run here, and hybrid needs it');
  if ((await natsMaxPayload()) === undefined) return t.skip('no NATS server answers on 127.0.0.1:4222');
  const r = shmbus(['bench', '--json', '--quick', '--transports', 'shm,nats,hybrid', '--codecs', 'raw', '--payloads', '64,65536']);
  assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}\n${r.stderr}`);
  assert.match(r.stderr, /^\[\d+\/\d+\] hybrid\/nats\/raw\/64: /m);
  const out = JSON.parse(r.stdout);
  const name = (x) => `${x.transport}${x.via ? `/${x.via}` : ''}/${x.codec}/${x.payload}`;
  assert.deepEqual(out.results.map(name), ['shm/raw/64', 'shm/raw/65536', 'nats/raw/64', 'nats/raw/65536', 'hybrid/shm/raw/64', 'hybrid/shm/raw/65536', 'hybrid/nats/raw/64', 'hybrid/nats/raw/65536']);
  for (const x of out.results) {
    const keys = ['codec', 'cpu_ms', 'cpu_us', 'mb_per_s', 'msgs_per_s', 'payload', 'rtt_us', 'transport'];
    assert.deepEqual(Object.keys(x).sort(), x.transport === 'hybrid' ? [...keys, 'via'].sort() : keys, JSON.stringify(x));
    for (const v of [...Object.values(x.rtt_us), x.msgs_per_s, x.mb_per_s, x.cpu_ms]) assert.ok(Number.isFinite(v) && v > 0, JSON.stringify(x));
  }

  const table = shmbus(['bench', '--quick', '--transports', 'shm,nats,hybrid', '--codecs', 'raw', '--payloads', '64']);
  assert.equal(table.status, 0, `exit ${table.status} ${table.signal ?? ''}\n${table.stderr}`);
  assert.match(table.stdout, /^hybrid\/shm\s+raw\s+64 B\s+\d/m);
  assert.match(table.stdout, /^hybrid\/nats\s+raw\s+64 B\s+\d/m);
  const lines = table.stdout.split('\n');
  const at = lines.findIndex((l) => l.startsWith('Against the transport of its path'));
  assert.ok(at > 0, table.stdout);
  const ratio = '(\\d+(\\.\\d)?x (faster|slower) than|about as fast as)';
  assert.match(lines[at + 1], new RegExp(`^  hybrid/shm raw 64 B\\s+round trip ${ratio} shm; messages/s ${ratio} shm$`));
  assert.match(lines[at + 2], new RegExp(`^  hybrid/nats raw 64 B\\s+round trip ${ratio} nats; messages/s ${ratio} nats$`));
  assert.equal(lines[at + 3], '');
});

test('bench writes an SVG chart and a table for people', () => {
  const svg = path.join(os.tmpdir(), `shmbus-bench-${process.pid}.svg`);
  try {
    const r = shmbus(['bench', '--duration', '0.2', '--transports', 'ipc,uds', '--payloads', '64', '--svg', svg]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^ipc\s+json\s+64 B/m);
    assert.match(r.stdout, /^uds\s+raw\s+64 B/m);
    const text = fs.readFileSync(svg, 'utf8');
    assert.match(text, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    assert.match(text, /<\/svg>\s*$/);
    assert.equal((text.match(/<rect [^>]*><title>/g) ?? []).length, 2 * 3, 'two bars in each of three charts');
  } finally {
    fs.rmSync(svg, { force: true });
  }
});

test('the table for people: units that fit, ratios in words against ipc and uds, no goals of the project, nats or how to add it', () => {
  // The default transports (nats joins them when a server answers), one payload and codec.
  const r = shmbus(['bench', '--quick', '--payloads', '64', '--codecs', 'raw']);
  assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}\n${r.stdout}\n${r.stderr}`);
  const lines = r.stdout.split('\n');
  assert.doesNotMatch(r.stdout, /Targets|MISSED|holds /, 'no project goals');

  const header = lines.findIndex((l) => /^transport\s+codec\s+payload\s+p50\s+p99\s+p99\.9\s+max\s+msgs\/s\s+MB\/s\s+cpu ms\s+cpu cost$/.test(l));
  assert.ok(header >= 0, r.stdout);
  const rows = [];
  for (const line of lines.slice(header + 1)) {
    if (line === '') break;
    rows.push(line.split(/\s{2,}/));
  }
  for (const row of rows) {
    // Each latency in the unit that fits it: never "12.6k µs".
    for (const cell of row.slice(3, 7)) assert.match(cell, /^\d+(\.\d+)? (µs|ms|s)$/, row.join(' | '));
    // CPU per message at 64 B, in the unit that fits it.
    assert.match(row[10], /^\d+(\.\d+)? (µs|ms|s)\/msg$/, row.join(' | '));
  }
  const names = rows.map((row) => row[0]);
  assert.ok(names.includes('process') && names.includes('ipc') && names.includes('uds'), names.join(','));

  // Each shmbus transport once against the references, in words, not a repeat of the progress lines.
  const at = lines.indexOf('Against what users have today (ipc: child.send(); uds: a Unix socket), at the same payload:');
  assert.ok(at > header, r.stdout);
  const against = [];
  for (const line of lines.slice(at + 1)) {
    if (line === '') break;
    against.push(line);
  }
  assert.deepEqual(against.map((l) => l.trim().split(' ')[0]), names.filter((n) => n !== 'ipc' && n !== 'uds'));
  const ratio = '(\\d+(\\.\\d)?x (faster|slower) than|about as fast as)';
  for (const line of against) {
    assert.match(line, new RegExp(`^  \\S+ raw 64 B\\s+round trip ${ratio} ipc, ${ratio} uds; messages/s ${ratio} ipc, ${ratio} uds$`), line);
  }
  if (names.includes('nats')) assert.doesNotMatch(r.stdout, /^nats: not measured/m);
  else assert.match(r.stdout, /^nats: not measured: no NATS server answers on 127\.0\.0\.1:4222; start one/m);
});

test('one combination is one, not "1 combinations"', () => {
  const r = shmbus(['bench', '--duration', '0.2', '--transports', 'ipc', '--payloads', '64']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /^shmbus bench: 1 combination, /m);
});

test('bad options exit 2 with a message', () => {
  for (const args of [
    ['bench', '--no-such-option'],
    ['bench', '--transports', 'shm,carrier-pigeon'],
    ['bench', '--payloads', '64,lots'],
    ['bench', '--codecs', 'xml'],
    ['bench', '--duration', '-1'],
    ['bench', '--duration'],
    ['bench', '--quick', '--duration', '1'],
    ['bench', '--spin-us', 'fast'],
    ['bench', 'extra'],
    ['frobnicate'],
  ]) {
    const r = shmbus(args, 10_000);
    assert.equal(r.status, 2, `${args.join(' ')}: exit ${r.status}\n${r.stderr}`);
    assert.equal(r.stdout, '', args.join(' '));
    assert.match(r.stderr, /^shmbus: .+/, args.join(' '));
  }
  const help = shmbus(['bench', '--help'], 10_000);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /--transports/);
});
