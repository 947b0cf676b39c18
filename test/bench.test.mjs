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

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const cli = path.join(root, 'dist', 'cli', 'index.js');
const require = createRequire(import.meta.url);

function shmbus(args, timeout = 110_000) {
  return spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', timeout });
}

/** shm joins the run where the addon loads and a bus opens (under CI it must). */
async function shmWorks() {
  try {
    const { open } = require(path.join(root, 'dist', 'index.js'));
    const bus = await open({ name: `bench-probe-${process.pid}`, transport: 'shm', id: 0 });
    await bus.close();
    return true;
  } catch (err) {
    if (process.env.CI === 'true') throw err;
    return false;
  }
}

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
    assert.deepEqual(Object.keys(x).sort(), ['codec', 'cpu_ms', 'mb_per_s', 'msgs_per_s', 'payload', 'rtt_us', 'transport']);
    assert.deepEqual(Object.keys(x.rtt_us).sort(), ['max', 'p50', 'p99', 'p999']);
    for (const v of [...Object.values(x.rtt_us), x.msgs_per_s, x.mb_per_s, x.cpu_ms]) {
      assert.ok(typeof v === 'number' && Number.isFinite(v) && v > 0, `${x.transport}/${x.codec}/${x.payload}: ${JSON.stringify(x)}`);
    }
    assert.ok(x.rtt_us.p50 <= x.rtt_us.p99 && x.rtt_us.p99 <= x.rtt_us.p999 && x.rtt_us.p999 <= x.rtt_us.max);
  }
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
