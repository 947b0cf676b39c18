// The README's programs, pasted as a user would: each runs as it is and exits by itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { transportsUnderTest } from './helpers/run.mjs';

const repo = fileURLToPath(new URL('..', import.meta.url));
const readme = fs.readFileSync(path.join(repo, 'README.md'), 'utf8');

/** The first ```js block after the heading `heading`. */
function codeUnder(heading) {
  const at = readme.indexOf(`\n${heading}\n`);
  assert.ok(at >= 0, `README has a heading ${heading}`);
  const block = /```js\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(block, `a js block under ${heading}`);
  return block[1];
}

/** A new project with shmbus installed (a link to this checkout) and `code` as its program. */
function project(file, code) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-readme-'));
  fs.mkdirSync(path.join(dir, 'node_modules'));
  fs.symlinkSync(repo, path.join(dir, 'node_modules', 'shmbus'), 'dir');
  fs.writeFileSync(path.join(dir, file), code);
  return dir;
}

/** Runs `node file` in `dir` as a user's shell would, killed after `timeout` ms. */
function runIn(dir, file, env, timeout = 10_000) {
  const childEnv = { ...process.env, SHMBUS_TEST_BUS: '', ...env };
  delete childEnv.NODE_TEST_CONTEXT;
  delete childEnv.SHMBUS_ID;
  return spawnSync(process.execPath, [file], { cwd: dir, env: childEnv, encoding: 'utf8', timeout, killSignal: 'SIGKILL' });
}

const transports = await transportsUnderTest();

test('the quick start, pasted as it is, runs and exits by itself', async (t) => {
  const code = codeUnder('## Quick start');
  // Each run on a bus of its own: the program's 'app' is renamed so that runs can't meet.
  for (const transport of transports) {
    const dir = project('quick.mjs', code.replace("name: 'app'", `name: 'quick${process.pid}${transport}'`));
    try {
      const r = runIn(dir, 'quick.mjs', { SHMBUS_TRANSPORT: transport });
      const out = `on ${transport}: exit ${r.status} ${r.signal ?? ''}\n${r.stdout}\n${r.stderr}`;
      assert.equal(r.signal, null, `killed after 10 s: it did not exit by itself ${out}`);
      assert.equal(r.status, 0, out);
      assert.match(r.stdout, /^primary reload from primary \{ version: 2 \}$/m, out);
      assert.match(r.stdout, /^1 reload from primary \{ version: 3 \}$/m, out);
      assert.match(r.stdout, /^\{ rss: \d+ \}$/m, out);
      t.diagnostic(`${transport}: exited 0`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});

/** A port nothing listens on now. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.once('error', reject);
  });
}

/** One HTTP request on a connection of its own; resolves the body. */
function ask(port, method, url, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: url, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (chunk) => (text += chunk)).on('end', () => resolve(text));
    });
    req.once('error', reject);
    req.end(body);
  });
}

test('the cache-invalidation example: no worker serves a stale value after a write, and SIGTERM ends it cleanly', async (t) => {
  const code = codeUnder('## Example: cache invalidation across workers');
  for (const transport of transports) {
    const dir = project('server.mjs', code.replace("name: 'users'", `name: 'users${process.pid}${transport}'`));
    const port = await freePort();
    const childEnv = { ...process.env, SHMBUS_TRANSPORT: transport, PORT: String(port) };
    delete childEnv.NODE_TEST_CONTEXT;
    delete childEnv.SHMBUS_ID;
    const child = spawn(process.execPath, ['server.mjs'], { cwd: dir, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const exited = new Promise((resolve) => child.once('exit', (status, signal) => resolve({ status, signal })));
    try {
      let first;
      for (const end = Date.now() + 15_000; first === undefined && Date.now() < end; ) {
        first = await ask(port, 'GET', '/user/1').catch(() => new Promise((resolve) => setTimeout(resolve, 100)));
      }
      assert.ok(first, `the server did not answer on ${transport}: ${output}`);
      const gets = async () => Promise.all(Array.from({ length: 6 }, () => ask(port, 'GET', '/user/1')));
      for (const body of await gets()) assert.match(body, /^Grace \(worker [12], (cached|loaded)\)\n$/, output);
      assert.match(await ask(port, 'PUT', '/user/1', 'Ada'), /^saved by worker [12]\n$/);
      for (const body of await gets()) assert.match(body, /^Ada \(worker [12], (cached|loaded)\)\n$/, `a stale value on ${transport}: ${output}`);

      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const end = await exited;
      clearTimeout(timer);
      assert.deepEqual(end, { status: 0, signal: null }, `SIGTERM on ${transport}: ${output}`);
      t.diagnostic(`${transport}: served, invalidated, exited 0 on SIGTERM`);
    } finally {
      child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});
