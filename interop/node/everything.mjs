// Starts @modelcontextprotocol/server-everything (the MCP reference "everything" server, pinned in
// package.json) for mcp-pool's interop tests (tests/interop.rs), in the shape the tests expect
// of every peer.
//
// Usage: node everything.mjs <streamableHttp|sse> <dist> [port]
//   <dist>: the package's dist directory,
//   .cache/interop/node/node_modules/@modelcontextprotocol/server-everything/dist
//   [port]: the port to listen on (default 0: a free one); a restart passes the port it had
//
// Plainly, the package is started with `PORT=<port> node <dist>/index.js streamableHttp` (MCP
// endpoint /mcp) or `... sse` (event stream GET /sse, messages POST /message?sessionId=…); it
// listens on every interface and says so only on stderr. This wrapper imports the same
// transport module, and:
// - binds 127.0.0.1 on a free port (PORT=0) or the one given, and prints `LISTENING <port>` on
//   stdout once the socket accepts connections;
// - silences the server's per-request console.log chatter (console.error stays);
// - exits when its stdin closes, so it never outlives the test that started it.

import http from 'node:http';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [transport, dist, port = '0'] = process.argv.slice(2);
if (!['streamableHttp', 'sse'].includes(transport) || !dist || !/^[0-9]+$/.test(port)) {
  console.error('usage: node everything.mjs <streamableHttp|sse> <server-everything dist dir> [port]');
  process.exit(2);
}

const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (...args) {
  this.once('listening', () => process.stdout.write(`LISTENING ${this.address().port}\n`));
  // express calls listen(port, callback): bind loopback only.
  if (args.length === 2 && typeof args[1] === 'function') args.splice(1, 0, '127.0.0.1');
  return listen.apply(this, args);
};
process.env.PORT = port;
console.log = () => {};

process.stdin.on('data', () => {});
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));

await import(pathToFileURL(path.join(dist, 'transports', `${transport}.js`)).href);
