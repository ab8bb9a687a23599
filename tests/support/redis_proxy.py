"""A TCP relay to a test's redis-server that can lose the server's replies to a reader: a network fault, not a
mock."""

from __future__ import annotations

import asyncio


class CuttingProxy:
    """A TCP relay to the test's redis-server. ``cut_reader()`` stops passing the server's replies to the
    connection that last sent an XREADGROUP and closes it shortly after: a reply the server already produced (its
    entries delivered to the consumer, pending) never reaches the consumer."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.reader_link: dict | None = None
        self.cut = 0
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{self.port}/0"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        link = {"client": client_w, "server": server_w, "frozen": False}
        for coro in (self._pipe(client_r, server_w, link, True), self._pipe(server_r, client_w, link, False)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, link: dict, upstream: bool) -> None:
        """Relay one direction: the client's commands up (noting which connection reads), the server's replies down
        (dropped once the link is frozen: lost on the way)."""
        try:
            while data := await r.read(65536):
                if upstream and b"XREADGROUP" in data:
                    self.reader_link = link
                if not upstream and link["frozen"]:
                    continue
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._close(link)

    @staticmethod
    def _close(link: dict) -> None:
        for side in ("client", "server"):
            link[side].close()

    def cut_reader(self, after_s: float) -> None:
        link = self.reader_link
        assert link is not None
        link["frozen"] = True
        self.cut += 1
        asyncio.get_running_loop().call_later(after_s, self._close, link)


class OutageProxy:
    """A TCP relay to the test's redis-server that takes Redis away at a chosen command: the first command holding
    ``marker`` (say a script's SHA: its commit) is never passed on, every connection is closed and new ones are closed
    at once until ``resume()``. Redis went away exactly then (``went_down`` is set)."""

    def __init__(self, port: int, marker: bytes) -> None:
        self.target = port
        self.marker = marker
        self.server: asyncio.Server | None = None
        self.armed = True
        self.down = False
        self.went_down = asyncio.Event()
        self._links: list[dict] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    def resume(self) -> None:
        self.down = False

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for link in self._links:
            CuttingProxy._close(link)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.down:
            client_w.close()
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        link = {"client": client_w, "server": server_w}
        self._links.append(link)
        for coro in (self._pipe(client_r, server_w, link, True), self._pipe(server_r, client_w, link, False)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, link: dict, upstream: bool) -> None:
        try:
            while data := await r.read(65536):
                if upstream and self.armed and self.marker in data:
                    self.armed, self.down = False, True
                    self.went_down.set()
                    for each in self._links:
                        CuttingProxy._close(each)
                    return
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            CuttingProxy._close(link)
