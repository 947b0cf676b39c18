// The program side of the conformance suite: what every fixture uses to report what it saw.
import { ShmbusError } from 'shmbus';

// `node --test test/` runs every file under test/, these programs too: they only do their work
// when a test starts them (run() takes the runner's NODE_TEST_CONTEXT out of their environment).
if (process.env.NODE_TEST_CONTEXT !== undefined) process.exit(0);

/** The bus name the test gave this run (each run has its own). */
export const busName = process.env.SHMBUS_TEST_BUS || 'conformance';

/** Prints the run's result: one JSON line that the test reads. */
export function result(value) {
  process.stdout.write(`${JSON.stringify({ result: value })}\n`);
}

/** Prints a line for the record (what a worker saw), not the result. */
export function note(value) {
  process.stdout.write(`${JSON.stringify({ note: value, pid: process.pid })}\n`);
}

function described(err) {
  if (err instanceof ShmbusError) return err.code;
  return `not a ShmbusError: ${err?.stack ?? err}`;
}

const ok = (value) => (value === undefined ? 'resolved' : { value });

/** Calls `fn`; its ShmbusError code if it throws, else { value } ('resolved' for undefined). */
export function codeOf(fn) {
  try {
    return ok(fn());
  } catch (err) {
    return described(err);
  }
}

/** Awaits `promise`; its ShmbusError code if it rejects, else { value } ('resolved' for undefined). */
export async function outcome(promise) {
  try {
    return ok(await promise);
  } catch (err) {
    return described(err);
  }
}

/** Like outcome(), with the error's message and remoteCode too. */
export async function failure(promise) {
  try {
    return ok(await promise);
  } catch (err) {
    if (!(err instanceof ShmbusError)) return { code: described(err) };
    const out = { code: err.code, message: err.message };
    if (err.remoteCode !== undefined) out.remoteCode = err.remoteCode;
    return out;
  }
}

/**
 * Sends 'seq' messages 0 to `n` - 1 to `to` as a user should under backpressure: on
 * ERR_SHMBUS_BACKPRESSURE, await drain() and send the same message again. Resolves how many times
 * it was refused.
 */
export async function sendSeq(bus, to, n) {
  let backpressured = 0;
  for (let i = 0; i < n; ) {
    try {
      bus.sendMessage('seq', i, to);
      i++;
    } catch (err) {
      if (err.code !== 'ERR_SHMBUS_BACKPRESSURE') throw err;
      backpressured++;
      await bus.drain();
    }
  }
  return backpressured;
}

/** Resolves after `ms`. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
