// A downstream client of mcp-pool-gateway built with the official MCP TypeScript SDK
// (@modelcontextprotocol/sdk): `Client` over `StreamableHTTPClientTransport`, or over
// `SSEClientTransport` (HTTP+SSE, 2024-11-05) when the URL ends in `/sse`, for
// gateway/tests/sdk_clients.rs. The same scenarios and output as interop/python/gateway_client.py.
//
// Usage: node gateway_client.mjs URL TOKEN SCENARIO
//   URL: a gateway MCP endpoint (http://127.0.0.1:PORT/servers/ID/mcp, or .../ID/sse); TOKEN: the
//   gateway JWT, sent as `Authorization: Bearer TOKEN` on every request (requestInit headers; the
//   SSE stream's GET too).
//   SCENARIO: basics | progress | cancel | counters | exchange (see gateway_client.py).
// Prints one JSON object per line on stdout ({"event": ...}); on failure an "error" event (with
// the HTTP status as `code` for an HTTP error) and exit status 1. The SDK is resolved through NODE_PATH (interop/setup.sh installs it under
// .cache/interop/node/node_modules): ES modules ignore NODE_PATH, so it is required from there.

import { createRequire } from 'node:module';
import path from 'node:path';
import readline from 'node:readline';

const require = createRequire(path.join(process.env.NODE_PATH ?? '.', 'noop.js'));
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { SSEClientTransport } = require('@modelcontextprotocol/sdk/client/sse.js');
const {
  CreateMessageRequestSchema, ElicitRequestSchema, ListRootsRequestSchema, LoggingMessageNotificationSchema, McpError,
} = require('@modelcontextprotocol/sdk/types.js');

const [url, token, scenario] = process.argv.slice(2);

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

const firstText = (content) => content.find((block) => block.type === 'text')?.text ?? null;

async function call(client, tool, args, index = 0, options = {}) {
  const result = await client.callTool({ name: tool, arguments: args }, undefined, options);
  emit('call', { session: index, tool, text: firstText(result.content), is_error: result.isError ?? false });
}

async function openSession() {
  const headers = { Authorization: `Bearer ${token}` };
  const transport = url.endsWith('/sse')
    ? new SSEClientTransport(new URL(url), {
      requestInit: { headers },
      eventSourceInit: { fetch: (input, init) => fetch(input, { ...init, headers: { ...init?.headers, ...headers } }) },
    })
    : new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
  const capabilities = { sampling: {}, elicitation: {}, roots: {} };
  const client = new Client({ name: 'mcp-pool-gateway-test', version: '1.0.0' }, { capabilities });
  client.setNotificationHandler(LoggingMessageNotificationSchema, ({ params }) =>
    emit('log', { level: params.level, logger: params.logger, data: params.data }));
  client.setRequestHandler(CreateMessageRequestSchema, ({ params }) => ({
    role: 'assistant',
    content: { type: 'text', text: `reply to ${params.messages[0].content.text}` },
    model: 'sdk-test',
  }));
  client.setRequestHandler(ElicitRequestSchema, () => ({ action: 'accept', content: { answer: 'yes' } }));
  client.setRequestHandler(ListRootsRequestSchema, () => ({ roots: [{ uri: 'file:///sdk-root' }] }));
  await client.connect(transport);
  const server = client.getServerVersion()?.name;
  const advertised = Object.keys(client.getServerCapabilities() ?? {}).sort();
  // SSEClientTransport keeps the negotiated version private: read it as the SDK set it.
  const protocol = transport.protocolVersion ?? transport._protocolVersion;
  emit('initialized', { server, protocol, capabilities: advertised });
  return client;
}

async function basics(client) {
  const { tools } = await client.listTools();
  emit('tools', { names: tools.map((tool) => tool.name) });
  await call(client, 'echo', { message: 'hello through the gateway' });
  const { resources } = await client.listResources();
  emit('resources', { uris: resources.map((resource) => resource.uri) });
  if (resources.length > 0) {
    const read = await client.readResource({ uri: resources[0].uri });
    emit('resource', { uri: resources[0].uri, text: read.contents[0].text });
  }
  const { prompts } = await client.listPrompts();
  emit('prompts', { names: prompts.map((prompt) => prompt.name) });
  if (prompts.length > 0) {
    const prompt = await client.getPrompt({ name: prompts[0].name, arguments: { name: 'Ada' } });
    emit('prompt', { name: prompts[0].name, text: prompt.messages[0].content.text });
  }
}

async function progress(client) {
  const onprogress = ({ progress, total, message }) => emit('progress', { progress, total, message });
  await call(client, 'progress', { steps: 3, delay_ms: 20 }, 0, { onprogress });
}

async function cancel(client) {
  const abort = new AbortController();
  const pending = call(client, 'sleep', { ms: 60_000 }, 0, { signal: abort.signal });
  emit('sent');
  await new Promise((resolve) => readline.createInterface({ input: process.stdin }).once('line', resolve));
  abort.abort('the user gave up'); // the SDK sends notifications/cancelled
  await pending.then(
    () => { throw new Error('the cancelled call completed'); },
    (error) => { if (!abort.signal.aborted) throw error; },
  );
  emit('cancelled');
}

async function exchange(client) {
  await client.ping();
  emit('pong');
  await call(client, 'log', { messages: ['one', 'two'] });
  await call(client, 'sample', { prompt: 'hello upstream' });
  await call(client, 'elicit', { message: 'ok?' });
  await call(client, 'roots', {});
  try {
    await call(client, 'fail', { message: 'boom-7' });
  } catch (error) {
    if (!(error instanceof McpError)) throw error;
    emit('call_error', { tool: 'fail', code: error.code, message: error.message });
  }
}

async function main() {
  const clients = [];
  try {
    if (scenario === 'counters') {
      clients.push(await openSession(), await openSession());
      for (const index of [0, 0, 1, 0, 1]) await call(clients[index], 'counter', {}, index);
    } else {
      const scenarios = { basics, progress, cancel, exchange };
      if (!scenarios[scenario]) throw new Error(`unknown scenario ${JSON.stringify(scenario)}`);
      clients.push(await openSession());
      await scenarios[scenario](clients[0]);
    }
  } finally {
    for (const client of clients) {
      await client.transport?.terminateSession?.();
      await client.close();
    }
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    // The SDK's StreamableHTTPError carries the HTTP status as `code`.
    emit('error', { message: `${error.name}: ${error.message}`, code: error.code });
    process.exit(1);
  },
);
