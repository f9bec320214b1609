'use strict';
// An MCP server built with the official TypeScript SDK (@modelcontextprotocol/sdk), served
// over streamable HTTP, for mcp-pool's interop tests (tests/interop.rs).
//
// Usage: node server.cjs [PORT]   (default 0: a free port)
//
// - Listens on 127.0.0.1 and prints `LISTENING <port>` on stdout once it accepts connections.
// - MCP endpoint: POST/GET/DELETE /mcp, one stateful SDK session per `initialize`.
// - Tool `echo {message: string}` returns `message` as one text content.
// - GET /stats returns {"initializes", "tool_calls", "http_requests", "sessions_alive",
//   "header_names"}: counted at the HTTP layer from the JSON-RPC bodies received, so the
//   figures do not depend on SDK internals. `header_names` are the lowercase names of every
//   request header seen on /mcp (never values).
// - Exits when its stdin closes, so it never outlives the test that started it.
//
// Dependencies are resolved through NODE_PATH (interop/setup.sh installs them under
// .cache/interop/node/node_modules).

const http = require('node:http');
const { randomUUID } = require('node:crypto');
const { McpServer } = require('@modelcontextprotocol/sdk/server/mcp.js');
const { StreamableHTTPServerTransport } = require('@modelcontextprotocol/sdk/server/streamableHttp.js');
const { z } = require('zod');

const stats = { initializes: 0, tool_calls: 0, http_requests: 0, sessions_alive: 0, header_names: [] };
const headerNames = new Set();
const transports = new Map();

function newServer() {
  const server = new McpServer({ name: 'mcp-pool-interop-node', version: '1.0.0' });
  server.registerTool(
    'echo',
    { description: 'Returns its `message` argument as one text content.', inputSchema: { message: z.string() } },
    async ({ message }) => ({ content: [{ type: 'text', text: message }] }),
  );
  return server;
}

function count(body) {
  for (const message of Array.isArray(body) ? body : [body]) {
    if (message && message.method === 'initialize') stats.initializes += 1;
    if (message && message.method === 'tools/call') stats.tool_calls += 1;
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

async function handleMcp(req, res) {
  stats.http_requests += 1;
  for (const name of Object.keys(req.headers)) headerNames.add(name.toLowerCase());
  const sessionId = req.headers['mcp-session-id'];
  let body;
  if (req.method === 'POST') {
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      return reply(res, 400, { jsonrpc: '2.0', error: { code: -32700, message: 'Parse error' }, id: null });
    }
    count(body);
  }
  let transport = sessionId ? transports.get(sessionId) : undefined;
  if (!transport) {
    const opens = req.method === 'POST' && !sessionId && !Array.isArray(body) && body && body.method === 'initialize';
    if (!opens) {
      return reply(res, sessionId ? 404 : 400, {
        jsonrpc: '2.0', error: { code: -32000, message: 'No valid session' }, id: null,
      });
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => {
        transports.set(id, transport);
        stats.sessions_alive += 1;
      },
    });
    transport.onclose = () => {
      if (transport.sessionId && transports.delete(transport.sessionId)) stats.sessions_alive -= 1;
    };
    await newServer().connect(transport);
  }
  await transport.handleRequest(req, res, body);
}

const server = http.createServer({ noDelay: true }, (req, res) => {
  const path = new URL(req.url, 'http://127.0.0.1').pathname;
  if (path === '/stats' && req.method === 'GET') {
    return reply(res, 200, { ...stats, header_names: [...headerNames].sort() });
  }
  if (path !== '/mcp') return reply(res, 404, { error: 'not found' });
  handleMcp(req, res).catch((error) => {
    console.error('interop node server:', error);
    if (!res.headersSent) reply(res, 500, { error: String(error) });
  });
});

server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  console.log(`LISTENING ${server.address().port}`);
});

process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
