"""Session-scoped MCP state through mcp-pool-gateway, driven by the official MCP Python SDK
(`mcp` from PyPI) against @modelcontextprotocol/server-everything, for
gateway/tests/session_state.rs.

Usage: python session_state.py URL TOKEN SCENARIO [ARG]

URL is a gateway MCP endpoint (`http://127.0.0.1:PORT/servers/ID/mcp`), TOKEN the gateway JWT.
One JSON object per line on stdout, as gateway_client.py prints them, plus:
  {"event": "updated", "session": i, "uri": uri}     a notifications/resources/updated
  {"event": "log", "session": i, "level": l, "data": d}   a logging notification
Scenarios:
- subscribe N: N sessions of this token; session i subscribes to demo://session-state/ARG-i
  (ARG defaults to "x"); session 0 calls `toggle-subscriber-updates` (server-everything then
  sends, at once and every 5 s, an update for every URI its upstream session subscribed to);
  waits for session 0's first update, then 1 s more, and calls the toggle again.
- logging: `logging/setLevel` debug, `toggle-simulated-logging` (a log at once, then one every
  5 s, each naming the upstream session), waits for a log that arrived after the call, calls
  the toggle again.
- roots: the session's roots are [ARG]; it sends notifications/roots/list_changed, waits for
  server-everything's "Roots updated" log (it asked roots/list outside any call), and calls
  `get-roots-list`.
"""

import sys
from contextlib import AsyncExitStack

import anyio
import mcp.types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway_client import call, emit, http_client, leaves

# How long any one wait may take: server-everything's timers fire every 5 s.
WAIT = 15


class Session:
    """One downstream session and what it received outside its calls."""

    def __init__(self, index: int, roots: list[str]):
        self.index = index
        self.roots = roots
        self.logs: list[str] = []
        self.updated: list[str] = []
        self.changed = anyio.Event()
        self.client: ClientSession | None = None

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        emit("log", session=self.index, level=params.level, data=params.data)
        self.logs.append(str(params.data))
        self.notify()

    async def on_message(self, message) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            uri = str(message.params.uri)
            emit("updated", session=self.index, uri=uri)
            self.updated.append(uri)
            self.notify()

    async def on_roots(self, _context) -> types.ListRootsResult:
        emit("roots_asked", session=self.index)
        return types.ListRootsResult(roots=[types.Root(uri=uri) for uri in self.roots])

    async def until(self, predicate) -> None:
        """Waits (at most WAIT seconds) until `predicate()` holds."""
        with anyio.fail_after(WAIT):
            while not predicate():
                await self.changed.wait()

    async def open(self, stack: AsyncExitStack, url: str, token: str) -> ClientSession:
        http = await stack.enter_async_context(http_client(token))
        read, write = await stack.enter_async_context(streamable_http_client(url, http_client=http))
        options = {"list_roots_callback": self.on_roots} if self.roots else {}
        client = ClientSession(read, write, logging_callback=self.on_log, message_handler=self.on_message, **options)
        self.client = await stack.enter_async_context(client)
        await self.client.initialize()
        emit("initialized", session=self.index)
        return self.client


async def subscribe(stack, url: str, token: str, count: str, tag: str = "x") -> None:
    sessions = [Session(i, []) for i in range(int(count))]
    for session in sessions:
        await session.open(stack, url, token)
        await session.client.subscribe_resource(f"demo://session-state/{tag}-{session.index}")
    first = sessions[0]
    await call(first.client, "toggle-subscriber-updates", {}, 0)
    await first.until(lambda: first.updated)
    await anyio.sleep(1)
    await call(first.client, "toggle-subscriber-updates", {}, 0)


async def logging(stack, url: str, token: str) -> None:
    session = Session(0, [])
    client = await session.open(stack, url, token)
    await client.set_logging_level("debug")
    await call(client, "toggle-simulated-logging", {}, 0)
    during = len(session.logs)
    emit("logs_during_call", count=during)
    await session.until(lambda: len(session.logs) > during)
    await call(client, "toggle-simulated-logging", {}, 0)


async def roots(stack, url: str, token: str, root: str) -> None:
    session = Session(0, [root])
    client = await session.open(stack, url, token)
    await client.send_roots_list_changed()
    await session.until(lambda: any("Roots updated" in log for log in session.logs))
    await call(client, "get-roots-list", {}, 0)


async def main(url: str, token: str, scenario: str, *args: str) -> None:
    async with AsyncExitStack() as stack:
        await {"subscribe": subscribe, "logging": logging, "roots": roots}[scenario](stack, url, token, *args)


if __name__ == "__main__":
    try:
        anyio.run(main, *sys.argv[1:])
    except BaseException as error:  # noqa: BLE001 - every failure becomes one error line
        message = "; ".join(f"{type(e).__name__}: {e}" for e in leaves(error))
        emit("error", message=message)
        sys.exit(1)
