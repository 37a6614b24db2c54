// The persistent JavaScript interpreter behind run_code (one per session): Node.js's own REPL evaluator.
//
// Started by ops_code as `node js_worker.js REQ_FD RESP_FD`. Same protocol as code_worker.py: after
// start-up it writes {"type": "ready"} to RESP_FD, then reads one JSON request per line from REQ_FD
// ({"code": str, "count": int}) and answers each with {"type": "done", "main": bundle|null,
// "error": {name, value, traceback}|null}. Cells are evaluated by a REPLServer (the `node` prompt's
// evaluator) in this process's global scope, so declarations survive between cells, top-level `await`
// works and the value of the last expression is the result. console output goes to this process's
// stdout/stderr, which the agent streams. SIGINT interrupts a running cell (a synchronous loop is
// stopped by the REPL's breakEvalOnSigint; a pending `await` is abandoned).
'use strict';

const domain = require('domain');
const fs = require('fs');
const readline = require('readline');
const repl = require('repl');
const util = require('util');
const { PassThrough, Writable } = require('stream');

const requestFd = Number(process.argv[2]);
const responseFd = Number(process.argv[3]);

function send(message) {
  fs.writeSync(responseFd, JSON.stringify(message) + '\n');
}

// The REPL reports errors thrown by a cell to its domain, not to the eval callback: with our own domain
// we hear them too (after the REPL has trimmed its own frames from the stack).
const cellDomain = domain.create();
const server = repl.start({
  input: new PassThrough(),
  output: new Writable({ write(chunk, encoding, callback) { callback(); } }),
  prompt: '',
  terminal: false,
  useGlobal: true,
  ignoreUndefined: true,
  breakEvalOnSigint: true,
  domain: cellDomain,
});

let pending = null; // {count, finish(error, value)} of the running cell

function describeError(error) {
  if (error instanceof Error || (error && typeof error === 'object' && 'stack' in error)) {
    const stack = String(error.stack || '');
    // The evaluator's frames (node:repl, node:vm, node:domain ..., this file) say nothing about the cell.
    const lines = stack.split('\n').filter((line) => !/^\s+at /.test(line) ||
      !(/\(?node:/.test(line) || line.includes(__filename) || /at new Promise \(<anonymous>\)/.test(line)));
    return { name: String(error.name || 'Error'), value: String(error.message || ''), traceback: lines.join('\n') };
  }
  return { name: 'Uncaught', value: util.inspect(error), traceback: 'Uncaught ' + util.inspect(error) };
}

function report(error) {
  if (pending !== null) {
    pending.finish(error, undefined);
  } else {
    // Thrown later by a timer or callback of an earlier cell: nobody waits for it, show it.
    process.stderr.write('Uncaught ' + (describeError(error).traceback || util.inspect(error)) + '\n');
  }
}

cellDomain.on('error', report);
process.on('uncaughtException', report);
process.on('unhandledRejection', (reason) => report(reason));

// Outside a cell's synchronous part, SIGINT abandons a cell that awaits (and is ignored between cells).
// During the synchronous part this listener is off: with one installed, the REPL's watchdog
// (breakEvalOnSigint) does not get the signal, and it is the watchdog that stops a busy loop.
function onSigint() {
  if (pending !== null) {
    const error = new Error('Script execution was interrupted by `SIGINT`');
    error.stack = 'Error: ' + error.message;
    pending.finish(error, undefined);
  }
}
process.on('SIGINT', onSigint);

function runCell(code, count) {
  return new Promise((resolve) => {
    let finished = false;
    pending = {
      count,
      finish(error, value) {
        if (finished) return;
        finished = true;
        pending = null;
        resolve([error, value]);
      },
    };
    const cell = pending;
    process.removeListener('SIGINT', onSigint);
    try {
      server.eval(code, server.context, `Cell${count}`, (error, value) => {
        // A Recoverable error is code the REPL would wait for more lines of: incomplete, so a syntax error.
        if (error instanceof repl.Recoverable) error = error.err;
        cell.finish(error || null, value);
      });
    } finally {
      process.on('SIGINT', onSigint);
    }
  });
}

async function main() {
  const requests = readline.createInterface({ input: fs.createReadStream(null, { fd: requestFd }) });
  send({ type: 'ready' });
  for await (const line of requests) {
    let request;
    try {
      request = JSON.parse(line);
    } catch {
      continue;
    }
    const [error, value] = await runCell(String(request.code ?? ''), Number(request.count ?? 0));
    let main = null;
    if (!error && value !== undefined) {
      main = { 'text/plain': util.inspect(value) };
    }
    send({ type: 'done', main, error: error ? describeError(error) : null });
  }
  server.close();
  process.exit(0);
}

main();
