"""A downstream client of mcp-pool-gateway built with the official MCP Python SDK (`mcp` from
PyPI): `ClientSession` over `streamable_http_client`, or over `sse_client` (HTTP+SSE,
2024-11-05) when the URL ends in `/sse`, for gateway/tests/sdk_clients.rs.

Usage: python gateway_client.py URL TOKEN SCENARIO

URL is a gateway MCP endpoint (`http://127.0.0.1:PORT/servers/ID/mcp`, or `.../ID/sse`), TOKEN
the gateway JWT sent as `Authorization: Bearer TOKEN` on every request of the transport. The script prints one JSON object per line on stdout:
  {"event": "initialized", "server": name, "protocol": version, "capabilities": [names]}
  {"event": "tools", "names": [...]}
  {"event": "call", "session": i, "tool": name, "text": first text content, "is_error": bool}
  {"event": "resources", "uris": [...]}  {"event": "resource", "uri": uri, "text": text}
  {"event": "prompts", "names": [...]}   {"event": "prompt", "name": name, "text": text}
  {"event": "progress", "progress": p, "total": t, "message": m}
  {"event": "sent"}  {"event": "cancelled"}
  {"event": "log", "level": l, "logger": name, "data": d}   a logging notification
  {"event": "call_error", "tool": name, "code": c, "message": m}   a JSON-RPC error of a call
  {"event": "pong"}
  {"event": "error", "message": m, "http_errors": ["POST 401", ...]}   then exit status 1
Scenarios:
- basics: list tools, call echo, list resources and read the first, list prompts and get the
  first with {"name": "Ada"} (each skipped when the server lists none);
- progress: call `progress` (3 steps, 20 ms apart) with a progress callback;
- cancel: call `sleep` for 60 s, print "sent", wait for a line on stdin, cancel the call (the
  SDK sends notifications/cancelled), print "cancelled";
- counters: two sessions of this token, `counter` called on sessions 0, 0, 1, 0, 1;
- exchange: ping; call `log` (["one", "two"]), `sample` (the client answers "reply to
  <prompt>"), `elicit` (it accepts with {"answer": "yes"}), `roots` (it lists file:///sdk-root)
  and `fail` ("boom-7").
Every session declares sampling, elicitation and roots, and prints the logging it receives.
"""

import json
import sys
from contextlib import AsyncExitStack

import anyio
import httpx2
import mcp.types as types
from mcp import ClientSession, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


# "METHOD STATUS" of every HTTP response >= 400, named in the error event: the SDK reports an
# HTTP error status as a JSON-RPC error without the status.
HTTP_ERRORS = []


async def record_http_error(response) -> None:
    if response.status_code >= 400:
        HTTP_ERRORS.append(f"{response.request.method} {response.status_code}")


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def first_text(content) -> str | None:
    return next((block.text for block in content if getattr(block, "type", None) == "text"), None)


async def call(session: ClientSession, tool: str, arguments: dict, index: int = 0, **options):
    result = await session.call_tool(tool, arguments, **options)
    emit("call", session=index, tool=tool, text=first_text(result.content), is_error=result.is_error)


async def basics(session: ClientSession) -> None:
    tools = (await session.list_tools()).tools
    emit("tools", names=[tool.name for tool in tools])
    await call(session, "echo", {"message": "hello through the gateway"})
    resources = (await session.list_resources()).resources
    emit("resources", uris=[str(resource.uri) for resource in resources])
    if resources:
        read = await session.read_resource(str(resources[0].uri))
        emit("resource", uri=str(resources[0].uri), text=read.contents[0].text)
    prompts = (await session.list_prompts()).prompts
    emit("prompts", names=[prompt.name for prompt in prompts])
    if prompts:
        prompt = await session.get_prompt(prompts[0].name, {"name": "Ada"})
        emit("prompt", name=prompts[0].name, text=prompt.messages[0].content.text)


async def progress(session: ClientSession) -> None:
    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        emit("progress", progress=progress, total=total, message=message)

    await call(session, "progress", {"steps": 3, "delay_ms": 20}, progress_callback=on_progress)


async def cancel(session: ClientSession) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(call, session, "sleep", {"ms": 60_000})
        emit("sent")
        await anyio.to_thread.run_sync(sys.stdin.readline)
        group.cancel_scope.cancel()
    emit("cancelled")


async def exchange(session: ClientSession) -> None:
    await session.send_ping()
    emit("pong")
    await call(session, "log", {"messages": ["one", "two"]})
    await call(session, "sample", {"prompt": "hello upstream"})
    await call(session, "elicit", {"message": "ok?"})
    await call(session, "roots", {})
    try:
        await call(session, "fail", {"message": "boom-7"})
    except MCPError as error:
        emit("call_error", tool="fail", code=error.error.code, message=error.error.message)


async def on_log(params: types.LoggingMessageNotificationParams) -> None:
    emit("log", level=params.level, logger=params.logger, data=params.data)


async def on_sampling(_context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    reply = types.TextContent(type="text", text=f"reply to {params.messages[0].content.text}")
    return types.CreateMessageResult(role="assistant", content=reply, model="sdk-test")


async def on_elicitation(_context, _params) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"answer": "yes"})


async def on_roots(_context) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///sdk-root")])


def http_client(token: str, **options) -> httpx2.AsyncClient:
    """The SDK's own HTTP client with the gateway token and the error-recording hook."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}, **options)
    http.event_hooks = {"response": [record_http_error]}
    return http


async def open_session(stack, url: str, token: str) -> ClientSession:
    if url.endswith("/sse"):
        # The SSE client makes its own HTTP client (for the stream and the POSTs) from a factory.
        factory = lambda headers=None, timeout=None, auth=None: http_client(token, timeout=timeout, auth=auth)  # noqa: E731
        read, write = await stack.enter_async_context(sse_client(url, httpx_client_factory=factory))
    else:
        http = await stack.enter_async_context(http_client(token))
        read, write = await stack.enter_async_context(streamable_http_client(url, http_client=http))
    session = ClientSession(
        read,
        write,
        sampling_callback=on_sampling,
        elicitation_callback=on_elicitation,
        list_roots_callback=on_roots,
        logging_callback=on_log,
    )
    session = await stack.enter_async_context(session)
    result = await session.initialize()
    capabilities = result.capabilities.model_dump(exclude_none=True)
    emit(
        "initialized",
        server=result.server_info.name,
        protocol=result.protocol_version,
        capabilities=sorted(capabilities),
    )
    return session


async def main(url: str, token: str, scenario: str) -> None:
    async with AsyncExitStack() as stack:
        if scenario == "counters":
            sessions = [await open_session(stack, url, token) for _ in range(2)]
            for index in [0, 0, 1, 0, 1]:
                await call(sessions[index], "counter", {}, index)
            return
        session = await open_session(stack, url, token)
        await {"basics": basics, "progress": progress, "cancel": cancel, "exchange": exchange}[scenario](session)


def leaves(error: BaseException):
    """The exceptions inside task-group exception groups."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


if __name__ == "__main__":
    try:
        anyio.run(main, *sys.argv[1:4])
    except BaseException as error:  # noqa: BLE001 - every failure becomes one error line
        message = "; ".join(f"{type(e).__name__}: {e}" for e in leaves(error))
        emit("error", message=message, http_errors=HTTP_ERRORS)
        sys.exit(1)
