"""A downstream client of mcp-pool-gateway built with the official MCP Python SDK (`mcp` from
PyPI): `ClientSession` over `streamable_http_client`, for gateway/tests/sdk_clients.rs.

Usage: python gateway_client.py URL TOKEN SCENARIO

URL is a gateway MCP endpoint (`http://127.0.0.1:PORT/servers/ID/mcp`), TOKEN the gateway JWT
sent as `Authorization: Bearer TOKEN`. The script prints one JSON object per line on stdout:
  {"event": "initialized", "server": name, "protocol": version, "capabilities": [names]}
  {"event": "tools", "names": [...]}
  {"event": "call", "session": i, "tool": name, "text": first text content, "is_error": bool}
  {"event": "resources", "uris": [...]}  {"event": "resource", "uri": uri, "text": text}
  {"event": "prompts", "names": [...]}   {"event": "prompt", "name": name, "text": text}
  {"event": "progress", "progress": p, "total": t, "message": m}
  {"event": "sent"}  {"event": "cancelled"}
  {"event": "error", "message": m}     then exit status 1
Scenarios:
- basics: list tools, call echo, list resources and read the first, list prompts and get the
  first with {"name": "Ada"} (each skipped when the server lists none);
- progress: call `progress` (3 steps, 20 ms apart) with a progress callback;
- cancel: call `sleep` for 60 s, print "sent", wait for a line on stdin, cancel the call (the
  SDK sends notifications/cancelled), print "cancelled";
- counters: two sessions of this token, `counter` called on sessions 0, 0, 1, 0, 1.
"""

import json
import sys
from contextlib import AsyncExitStack

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


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


async def open_session(stack, url: str, token: str) -> ClientSession:
    http = await stack.enter_async_context(httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}))
    read, write = await stack.enter_async_context(streamable_http_client(url, http_client=http))
    session = await stack.enter_async_context(ClientSession(read, write))
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
        await {"basics": basics, "progress": progress, "cancel": cancel}[scenario](session)


if __name__ == "__main__":
    try:
        anyio.run(main, *sys.argv[1:4])
    except BaseException as error:  # noqa: BLE001 - every failure becomes one error line
        emit("error", message=f"{type(error).__name__}: {error}")
        sys.exit(1)
