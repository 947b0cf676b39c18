// PM2 for real: two instances of one application in PM2's cluster mode find each other on the
// default transport and talk; two applications share a bus with an id per app. PM2 runs with a
// home of its own, so no other PM2 is touched.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pm2Home, until } from './helpers/pm2.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const app = path.join(root, 'test', 'fixtures', 'pm2-app.cjs');

test('PM2 cluster mode: instances 0 and 1 open the bus with their default ids and talk over shm', { timeout: 90_000 }, async () => {
  const pm2 = pm2Home((work) => ({ SHMBUS_TRANSPORT: undefined, PM2_TEST_OUT: path.join(work, 'outcome.json'), PM2_TEST_BUS: `pm2-${process.pid}` }));
  const out = path.join(pm2.work, 'outcome.json');
  try {
    pm2.run('start', app, '--name', 'shmbus-pm2-test', '-i', '2', '--no-autorestart');
    const outcome = await until(() => (fs.existsSync(out) ? JSON.parse(fs.readFileSync(out, 'utf8')) : undefined), 40_000);
    assert.ok(outcome, `instance 0 wrote no outcome; pm2 sees ${JSON.stringify(pm2.described())}`);
    assert.equal(outcome.error, undefined);
    assert.deepEqual(
      pm2.described().map(([, , mode]) => mode),
      ['cluster_mode', 'cluster_mode'],
    );
    assert.equal(outcome.id, 0);
    assert.equal(outcome.transport, 'shm');
    assert.deepEqual(outcome.peers, [1]);
    assert.equal(outcome.answer.id, 1);
    assert.equal(outcome.answer.transport, 'shm');
    assert.notEqual(outcome.answer.pid, outcome.pid);
    assert.deepEqual(outcome.pong, { text: 'hi back', from: 1 });
  } finally {
    pm2.done();
  }
});

test('PM2, two apps on one bus: default ids collide (a clear DUPLICATE_ID, nothing left open), ids per app talk', { timeout: 90_000 }, async () => {
  const apps = path.join(root, 'test', 'fixtures', 'pm2-apps.cjs');
  const pm2 = pm2Home(() => ({ SHMBUS_TRANSPORT: undefined }));
  const work = pm2.work;
  // One ecosystem file, two apps of one instance each in cluster mode (both are NODE_APP_INSTANCE 0).
  const start = (ids) => {
    const out = path.join(work, ids);
    fs.mkdirSync(out);
    const app = (name) => ({
      name: `${name}-${ids}`,
      script: apps,
      exec_mode: 'cluster',
      instances: 1,
      autorestart: false,
      env: { PM2_APP: name, PM2_IDS: ids, PM2_TEST_OUT: out, PM2_TEST_BUS: `pm2${ids}${process.pid}` },
    });
    const file = path.join(work, `${ids}.config.js`);
    fs.writeFileSync(file, `module.exports = ${JSON.stringify({ apps: [app('web'), app('jobs')] })};`);
    pm2.run('start', file);
    const read = (name) => (fs.existsSync(path.join(out, `${name}.json`)) ? JSON.parse(fs.readFileSync(path.join(out, `${name}.json`), 'utf8')) : undefined);
    return until(() => {
      const [web, jobs] = [read('web'), read('jobs')];
      return web && jobs ? { web, jobs } : undefined;
    }, 40_000);
  };
  try {
    const clash = await start('default');
    assert.ok(clash, 'both apps wrote what happened');
    const refused = [clash.web, clash.jobs].filter((o) => o.refused);
    assert.equal(refused.length, 1, JSON.stringify(clash));
    const [loser] = refused;
    const winner = loser === clash.web ? clash.jobs : clash.web;
    assert.equal(winner.id, 0);
    assert.equal(loser.refused.code, 'ERR_SHMBUS_DUPLICATE_ID');
    assert.match(loser.refused.message, new RegExp(`^member id 0 of bus "pm2default\\d+" is held by process ${winner.pid}\\b`));
    assert.match(loser.refused.message, /Under PM2, NODE_APP_INSTANCE counts from 0 in each app.*id: 'jobs\.' \+ process\.env\.NODE_APP_INSTANCE.*or a bus of its own/);
    // (PM2's own file requests come and go)
    const left = [...loser.after];
    for (const r of loser.before) if (left.includes(r)) left.splice(left.indexOf(r), 1);
    assert.deepEqual(left.filter((r) => r !== 'FSReqCallback'), [], `the refused open() left no handle behind: ${JSON.stringify(loser)}`);

    const perApp = await start('per-app');
    assert.ok(perApp, 'both apps wrote what happened');
    assert.equal(perApp.web.error, undefined);
    assert.equal(perApp.web.id, 'web.0');
    assert.equal(perApp.jobs.id, 'jobs.0');
    assert.deepEqual(perApp.web.peers, ['jobs.0']);
    assert.deepEqual(perApp.web.answer, { id: 'jobs.0', pid: perApp.jobs.pid });
  } finally {
    pm2.done();
  }
});
