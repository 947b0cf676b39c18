#!/usr/bin/env node
/** The `shmbus` command. One command so far: `shmbus bench`. */
import { BENCH_HELP, UsageError, parseBenchArgs, runBench } from './bench';

const HELP = `Usage: shmbus <command> [options]

Commands:
  bench    latency and throughput of every transport, next to child.send() and a Unix socket

Run \`shmbus bench --help\` for the options.
`;

function usage(message: string): never {
  process.stderr.write(`shmbus: ${message}\n\nRun \`shmbus --help\` or \`shmbus bench --help\` for usage.\n`);
  process.exit(2);
}

async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined) {
    process.stderr.write(HELP);
    return 2;
  }
  if (command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  if (command !== 'bench') usage(`unknown command ${JSON.stringify(command)}`);
  let options;
  try {
    options = parseBenchArgs(rest);
  } catch (err) {
    if (err instanceof UsageError) usage(err.message);
    throw err;
  }
  if (options === 'help') {
    process.stdout.write(BENCH_HELP);
    return 0;
  }
  return runBench(options);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`shmbus: ${(err as Error)?.stack ?? err}\n`);
    process.exitCode = 1;
  },
);
