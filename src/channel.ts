/** An async FIFO channel, as Swoole's coroutine Channel: push() never waits, pop() waits for a value. */
export class Channel<T = unknown> {
  private readonly values: T[] = [];
  private readonly waiters: Array<(value: T | undefined) => void> = [];

  /** Values waiting to be popped. */
  get length(): number {
    return this.values.length;
  }

  push(value: T): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter(value);
    else this.values.push(value);
  }

  /** Resolves the oldest value, or `undefined` once `timeoutMs` passes with none (no timeout: waits). */
  pop(timeoutMs?: number): Promise<T | undefined> {
    if (this.values.length > 0) return Promise.resolve(this.values.shift());
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const waiter = (value: T | undefined) => {
        if (timer) clearTimeout(timer);
        resolve(value);
      };
      this.waiters.push(waiter);
      if (timeoutMs !== undefined && timeoutMs >= 0 && Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          const at = this.waiters.indexOf(waiter);
          if (at >= 0) this.waiters.splice(at, 1);
          resolve(undefined);
        }, timeoutMs);
      }
    });
  }
}
