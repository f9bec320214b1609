"""An MCP server built with the official Python SDK (`mcp` from PyPI), for mcp-pool's interop
tests (tests/interop.rs).

Usage: python server.py --transport {streamable-http,sse} [--port PORT] [--json-response]
  (port 0: a free one)

- Listens on 127.0.0.1 and prints `LISTENING <port>` on stdout once the socket accepts
  connections (queued until uvicorn serves them).
- streamable-http: the MCP endpoint is /mcp; request POSTs are answered with an SSE stream (the
  SDK's default, stateful mode), or with one JSON body with --json-response. sse (the
  2024-11-05 HTTP+SSE transport): the event stream is GET /sse, messages are POSTed to the URL
  its `endpoint` event names (/messages/).
- Tool `echo(message: str)` returns `message`.
- Resource `ref://greeting` (text "hello from the Python SDK server") and prompt
  `greet(name)` (one user message "Hello, <name>!"), as the reference server's.
- Tools that talk to the client besides replying, named and behaving as the reference server's
  (conformance/src/server/handler.rs) as far as the SDK allows:
  - `progress(steps, delay_ms=0)`: `steps` progress notifications (ctx.report_progress: the
    request's progress token, progress 1..steps, total steps, message "step i of n"), waiting
    `delay_ms` before each; returns "done <steps>". Without a progress token the SDK sends
    nothing (the waits still happen).
  - `log(messages, level="info")`: one `notifications/message` per string during the call
    (ctx.log, logger "reference"; the SDK sends them on the request's stream); returns
    "logged <n>".
  - `notify(kinds, after_ms=0)`: for each of "tools", "resources", "prompts" the matching
    `notifications/*/list_changed`, "updated" `notifications/resources/updated` for
    ref://counter, "log" a logging message "session-level" (all on the session's standalone
    stream, ctx.session.send_*); now, or from a task `after_ms` later; returns "notified".
  - `sample(prompt)`: `sampling/createMessage` (one user text message, max_tokens 16, on the
    request's stream); returns "sampled: <reply text>".
  - `elicit(message)`: `elicitation/create` (form, one optional string property `answer`);
    returns "elicited: <action> <content json>".
  - `roots()`: `roots/list` (the SDK sends it on the standalone stream); returns
    "roots: <uri>,<uri>,...".
  A JSON-RPC error from the client (or no way to reach it) becomes an `isError` result
  "sampling failed: <message>" ("elicitation failed: ...", "roots failed: ..."). Declared
  capabilities: tools, resources and prompts with listChanged, and logging (setLevel accepted,
  nothing filtered).
- GET /stats returns {"initializes", "tool_calls", "http_requests", "header_names"}, counted at
  the HTTP layer from the JSON-RPC bodies received (an ASGI middleware), so the figures do not
  depend on SDK internals. `header_names` are the lowercase names of every request header seen
  on the MCP routes (never values).
- Exits when its stdin closes, so it never outlives the test that started it.

The server is the SDK's FastMCP, named `MCPServer` since mcp 2.0; both spellings are accepted.
"""

import argparse
import asyncio
import functools
import json
import os
import socket
import sys
import threading
import warnings
from typing import Literal

import mcp.types as types
import uvicorn
from mcp.server.lowlevel.server import NotificationOptions

try:
    from mcp.server.mcpserver import Context  # mcp >= 2
    from mcp.server.mcpserver import MCPServer as FastMCP
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import Context, FastMCP

# Logging, sampling and roots are deprecated by SEP-2577 (protocol 2026-07-28) but are what
# 2025-11-25 servers send and what the interop tests exercise.
warnings.filterwarnings("ignore", message=r"The (logging|sampling|roots) capability is deprecated")

STATS = {"initializes": 0, "tool_calls": 0, "http_requests": 0}
HEADER_NAMES = set()

mcp = FastMCP("mcp-pool-interop-python")


@mcp.tool()
def echo(message: str) -> str:
    """Returns its `message` argument as one text content."""
    return message


@mcp.resource("ref://greeting", name="greeting", mime_type="text/plain")
def greeting() -> str:
    """The one resource."""
    return "hello from the Python SDK server"


@mcp.prompt()
def greet(name: str) -> str:
    """Greets `name`."""
    return f"Hello, {name}!"


LOGGER = "reference"
UPDATED_RESOURCE = "ref://counter"
MAX_PROGRESS_STEPS = 10_000
SAMPLE_MAX_TOKENS = 16
# Tasks sending delayed notifications: referenced until done, so they are not collected.
BACKGROUND = set()


def ok(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def error_result(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def failure(what: str, error: Exception) -> types.CallToolResult:
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return error_result(f"{what} failed: {message}")


@mcp.tool()
async def progress(steps: int, ctx: Context, delay_ms: int = 0) -> types.CallToolResult:
    """Sends `steps` progress notifications with the request's progress token (waiting
    `delay_ms` before each), then returns "done <steps>"."""
    if steps > MAX_PROGRESS_STEPS:
        return error_result(f"progress: steps must be at most {MAX_PROGRESS_STEPS}, got {steps}")
    for step in range(1, steps + 1):
        await asyncio.sleep(delay_ms / 1000)
        await ctx.report_progress(step, steps, f"step {step} of {steps}")
    return ok(f"done {steps}")


@mcp.tool()
async def log(messages: list[str], ctx: Context, level: types.LoggingLevel = "info") -> str:
    """Sends one logging notification per message (logger "reference") during the call, then
    returns "logged <n>"."""
    for message in messages:
        await ctx.log(level, message, logger_name=LOGGER)
    return f"logged {len(messages)}"


async def send_notifications(session, kinds) -> None:
    for kind in kinds:
        if kind == "tools":
            await session.send_tool_list_changed()
        elif kind == "resources":
            await session.send_resource_list_changed()
        elif kind == "prompts":
            await session.send_prompt_list_changed()
        elif kind == "updated":
            await session.send_resource_updated(UPDATED_RESOURCE)
        elif kind == "log":
            await session.send_log_message("info", "session-level", logger=LOGGER)


@mcp.tool()
async def notify(
    kinds: list[Literal["tools", "resources", "prompts", "updated", "log"]],
    ctx: Context,
    after_ms: int = 0,
) -> str:
    """Sends list_changed (tools, resources, prompts), resources/updated (updated) or a logging
    message (log) notifications, now or `after_ms` later; returns "notified"."""
    session = ctx.session
    if after_ms == 0:
        await send_notifications(session, kinds)
    else:
        async def later():
            await asyncio.sleep(after_ms / 1000)
            try:
                await send_notifications(session, kinds)
            except Exception as error:  # the session ended meanwhile
                print(f"notify: the delayed notifications were not sent: {error}", file=sys.stderr)

        task = asyncio.get_running_loop().create_task(later())
        BACKGROUND.add(task)
        task.add_done_callback(BACKGROUND.discard)
    return "notified"


@mcp.tool()
async def sample(prompt: str, ctx: Context) -> types.CallToolResult:
    """Asks the client for a sampling/createMessage of `prompt`; returns "sampled: <reply>"."""
    try:
        reply = await ctx.session.create_message(
            [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
            max_tokens=SAMPLE_MAX_TOKENS,
            related_request_id=ctx.request_id,
        )
    except Exception as error:
        return failure("sampling", error)
    content = reply.content if isinstance(reply.content, list) else [reply.content]
    texts = [block.text for block in content if getattr(block, "type", None) == "text"]
    if not texts:
        return error_result("sampling failed: the reply has no text content")
    return ok(f"sampled: {texts[0]}")


@mcp.tool()
async def elicit(message: str, ctx: Context) -> types.CallToolResult:
    """Asks the client for elicitation/create with `message`; returns
    "elicited: <action> <content json>"."""
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    try:
        reply = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    except Exception as error:
        return failure("elicitation", error)
    return ok(f"elicited: {reply.action} {json.dumps(reply.content, separators=(',', ':'))}")


@mcp.tool()
async def roots(ctx: Context) -> types.CallToolResult:
    """Asks the client for roots/list; returns "roots: <uri>,<uri>,..."."""
    try:
        reply = await ctx.session.list_roots()
    except Exception as error:
        return failure("roots", error)
    return ok("roots: " + ",".join(str(root.uri) for root in reply.roots))


async def set_logging_level(_ctx, _params) -> types.EmptyResult:
    return types.EmptyResult()


# Declare what the tools above send: listChanged for tools, resources and prompts (the SDK
# takes these flags only as arguments of create_initialization_options, which its HTTP apps
# call without any), and logging (declared when logging/setLevel has a handler).
_lowlevel = mcp._lowlevel_server
_lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_logging_level)
_lowlevel.create_initialization_options = functools.partial(
    _lowlevel.create_initialization_options,
    NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True),
)


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
    parser.add_argument(
        "--json-response",
        action="store_true",
        help="streamable-http: answer each request POST with one JSON body, not an SSE stream",
    )
    args = parser.parse_args()

    if args.transport == "sse":
        app = mcp.sse_app()
    else:
        app = mcp.streamable_http_app(json_response=args.json_response)

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
