/** Every error shmbus raises is a ShmbusError whose `code` is one of these. */
export type ShmbusErrorCode =
  | 'ERR_SHMBUS_TIMEOUT'
  | 'ERR_SHMBUS_PEER_GONE'
  | 'ERR_SHMBUS_NO_HANDLER'
  | 'ERR_SHMBUS_UNKNOWN_PEER'
  | 'ERR_SHMBUS_REMOTE'
  | 'ERR_SHMBUS_SERIALIZE'
  | 'ERR_SHMBUS_TOO_LARGE'
  | 'ERR_SHMBUS_BACKPRESSURE'
  | 'ERR_SHMBUS_INVALID_ARG'
  | 'ERR_SHMBUS_DUPLICATE_ID'
  | 'ERR_SHMBUS_CLOSED'
  | 'ERR_SHMBUS_ABORTED'
  | 'ERR_SHMBUS_TRANSPORT'
  | 'ERR_SHMBUS_PROTOCOL'
  | 'ERR_SHMBUS_LISTENER';

export class ShmbusError extends Error {
  readonly code: ShmbusErrorCode;
  /** For ERR_SHMBUS_REMOTE: the `code` of the error the remote handler threw, if it had one. */
  readonly remoteCode?: string;

  constructor(code: ShmbusErrorCode, message: string, options?: { cause?: unknown; remoteCode?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ShmbusError';
    this.code = code;
    if (options?.remoteCode !== undefined) this.remoteCode = options.remoteCode;
  }
}

export function invalidArg(message: string): ShmbusError {
  return new ShmbusError('ERR_SHMBUS_INVALID_ARG', message);
}

/** A byte count as a reader takes it in: "512 bytes", "12.5 KiB", "64 MiB". */
export function sizeText(bytes: number): string {
  if (bytes < 1024) return `${bytes} bytes`;
  const [value, unit] = bytes < 2 ** 20 ? [bytes / 1024, 'KiB'] : [bytes / 2 ** 20, 'MiB'];
  return `${Number(value.toFixed(value < 10 ? 2 : 1))} ${unit}`;
}

/**
 * ERR_SHMBUS_DUPLICATE_ID for `id` on bus `bus`, held by `holder` (e.g. "process 1234 (node
 * web.js)"), with the fix; under PM2 the usual cause is two apps numbered from 0 on one bus.
 */
export function duplicateId(id: number | string, bus: string, holder = 'a live member'): ShmbusError {
  const fromPm2 = typeof id === 'number' && process.env.NODE_APP_INSTANCE === String(id);
  const fix = fromPm2
    ? `Under PM2, NODE_APP_INSTANCE counts from 0 in each app, so two apps on one bus claim the same ids: give each app ids of its own (id: 'jobs.' + process.env.NODE_APP_INSTANCE) or a bus of its own (name)`
    : `Every member needs an id of its own: pass open({ id }) or set SHMBUS_ID, or close the other member first`;
  const idText = typeof id === 'number' ? String(id) : JSON.stringify(id);
  return new ShmbusError('ERR_SHMBUS_DUPLICATE_ID', `member id ${idText} of bus ${JSON.stringify(bus)} is held by ${holder}. ${fix}`);
}
