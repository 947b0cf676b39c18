import { invalidArg } from './errors';
import { show } from './ids';

/** The longest timeout a Node timer takes, in ms. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * An in-process async FIFO (not shared between processes): push() never waits, pop() waits for a
 * value. Modelled on Swoole's coroutine Channel, whose pop(-1) also waits for ever.
 */
export class Channel<T = unknown> {
  private readonly values: T[] = [];
  private readonly waiters: Array<(value: T) => void> = [];

  /** Values waiting to be popped. */
  get length(): number {
    return this.values.length;
  }

  /** Hands `value` to the oldest waiting pop(), else keeps it for the next one. */
  push(value: T): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(value);
    else this.values.push(value);
  }

  /**
   * Resolves the oldest value, or `undefined` once `timeoutMs` passes with none. Omitted or -1:
   * waits for ever; 0: only a value that is there now. Anything but -1 or 0..2^31-1 rejects with
   * ERR_SHMBUS_INVALID_ARG. A pop that timed out takes no later value.
   */
  pop(timeoutMs?: number): Promise<T | undefined> {
    const forever = timeoutMs === undefined || timeoutMs === -1;
    if (!forever && !(typeof timeoutMs === 'number' && timeoutMs >= 0 && timeoutMs <= MAX_TIMEOUT_MS)) {
      return Promise.reject(invalidArg(`pop() takes a timeout in ms from 0 to 2^31-1, or -1 (or none) to wait for ever; got ${show(timeoutMs)}`));
    }
    if (this.values.length > 0) return Promise.resolve(this.values.shift());
    if (timeoutMs === 0) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const waiter = (value: T) => {
        if (timer) clearTimeout(timer);
        resolve(value);
      };
      this.waiters.push(waiter);
      if (forever) return;
      timer = setTimeout(() => {
        // Out of the queue first, so that no later push() hands its value to this pop.
        const at = this.waiters.indexOf(waiter);
        if (at >= 0) this.waiters.splice(at, 1);
        resolve(undefined);
      }, timeoutMs);
    });
  }
}
