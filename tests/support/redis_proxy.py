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
        for coro in (self._up(client_r, server_w, link), self._down(server_r, client_w, link)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _up(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, link: dict) -> None:
        try:
            while data := await r.read(65536):
                if b"XREADGROUP" in data:
                    self.reader_link = link
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._close(link)

    async def _down(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, link: dict) -> None:
        try:
            while data := await r.read(65536):
                if link["frozen"]:
                    continue  # the server's reply is lost on the way
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
