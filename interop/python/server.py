"""An MCP server built with the official Python SDK (`mcp` from PyPI), for mcp-pool's interop
tests (tests/interop.rs).

Usage: python server.py --transport {streamable-http,sse} [--port PORT]   (port 0: a free one)

- Listens on 127.0.0.1 and prints `LISTENING <port>` on stdout once the socket accepts
  connections (queued until uvicorn serves them).
- streamable-http: the MCP endpoint is /mcp. sse (the 2024-11-05 HTTP+SSE transport): the event
  stream is GET /sse, messages are POSTed to the URL its `endpoint` event names (/messages/).
- Tool `echo(message: str)` returns `message`.
- GET /stats returns {"initializes", "tool_calls", "http_requests", "header_names"}, counted at
  the HTTP layer from the JSON-RPC bodies received (an ASGI middleware), so the figures do not
  depend on SDK internals. `header_names` are the lowercase names of every request header seen
  on the MCP routes (never values).
- Exits when its stdin closes, so it never outlives the test that started it.

The server is the SDK's FastMCP, named `MCPServer` since mcp 2.0; both spellings are accepted.
"""

import argparse
import json
import os
import socket
import sys
import threading

import uvicorn

try:
    from mcp.server.mcpserver import MCPServer as FastMCP  # mcp >= 2
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP

STATS = {"initializes": 0, "tool_calls": 0, "http_requests": 0}
HEADER_NAMES = set()

mcp = FastMCP("mcp-pool-interop-python")


@mcp.tool()
def echo(message: str) -> str:
    """Returns its `message` argument as one text content."""
    return message


def count(body: bytes) -> None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return
    for message in parsed if isinstance(parsed, list) else [parsed]:
        if not isinstance(message, dict):
            continue
        if message.get("method") == "initialize":
            STATS["initializes"] += 1
        elif message.get("method") == "tools/call":
            STATS["tool_calls"] += 1


class Observe:
    """ASGI middleware: serves GET /stats, counts requests and the JSON-RPC messages POSTed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/stats" and scope["method"] == "GET":
            body = json.dumps({**STATS, "header_names": sorted(HEADER_NAMES)}).encode()
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            })
            await send({"type": "http.response.body", "body": body})
            return
        STATS["http_requests"] += 1
        for name, _value in scope["headers"]:
            HEADER_NAMES.add(name.decode("latin-1").lower())
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        count(body)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def exit_when_stdin_closes() -> None:
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["streamable-http", "sse"], required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    app = mcp.sse_app() if args.transport == "sse" else mcp.streamable_http_app()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)

    config = uvicorn.Config(Observe(app), log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
