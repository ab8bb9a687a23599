"""Resumable HTTP downloads (httpx): a partial file continues with a ``Range`` request.

httpx errors are translated here into ``FetchError`` naming the URL, the cause and what to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import httpx

from sentinel.data.plan import FetchError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRIES = 3


class HttpSource:
    """GETs below one base URL. Use as ``async with HttpSource(base) as src``."""

    def __init__(self, base_url: str, *, timeout: float = 60.0, retries: int = RETRIES) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header) of every GET, for the summary

    async def __aenter__(self) -> HttpSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    async def text(self, path: str) -> str | None:
        """The body of ``path`` as text; None when the server has no such file (404)."""
        attempt = 0
        while True:
            try:
                self.requests.append((path, None))
                resp = await self._client.get(self.url(path))
                break
            except httpx.TransportError as exc:
                await self._retry_or_raise(path, attempt, exc)
                attempt += 1
        if resp.status_code == 404:
            return None
        self._check(path, resp)
        return resp.text

    async def download(self, path: str, dest: Path, on_size: Callable[[int, int | None], None],
                       on_bytes: Callable[[int], None]) -> bool:
        """Fetch ``path`` into ``dest``, continuing a partial ``dest`` with a Range request (a server that ignores
        it sends the whole file, which then replaces it). ``on_size(already_there, total_or_None)`` is called once
        the size is known, ``on_bytes(n)`` per chunk. False when the server has no such file (404)."""
        attempt = 0
        while True:
            try:
                return await self._download_once(path, dest, on_size, on_bytes)
            except httpx.TransportError as exc:  # the next attempt resumes from what was written
                await self._retry_or_raise(path, attempt, exc)
                attempt += 1

    async def _download_once(self, path: str, dest: Path, on_size: Callable[[int, int | None], None],
                             on_bytes: Callable[[int], None]) -> bool:
        have = dest.stat().st_size if dest.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        self.requests.append((path, headers.get("Range")))
        async with self._client.stream("GET", self.url(path), headers=headers) as resp:
            if resp.status_code == 404:
                return False
            if resp.status_code == 416:  # nothing past what we have: complete, or longer than the file
                total = _total_from_content_range(resp.headers.get("content-range"))
                if total is not None and total == have:
                    on_size(have, total)
                    return True
                dest.unlink()
                return await self._download_once(path, dest, on_size, on_bytes)
            self._check(path, resp)
            resumed = resp.status_code == 206
            if not resumed:
                have = 0
            length = resp.headers.get("content-length")
            on_size(have, have + int(length) if length and length.isdigit() else None)
            with dest.open("ab" if resumed else "wb") as fh:
                async for chunk in resp.aiter_bytes(CHUNK):
                    fh.write(chunk)
                    on_bytes(len(chunk))
        return True

    def _check(self, path: str, resp: httpx.Response) -> None:
        if resp.status_code in (200, 206):
            return
        hint = "the server is rate limiting: wait a minute and run again" if resp.status_code in (403, 418, 429) \
            else "run again later, or check --base-url"
        raise FetchError(f"{self.url(path)}: HTTP {resp.status_code} {resp.reason_phrase}; {hint}")

    async def _retry_or_raise(self, path: str, attempt: int, exc: httpx.TransportError) -> None:
        if attempt >= self.retries or isinstance(exc, httpx.UnsupportedProtocol):
            raise FetchError(f"cannot reach {self.url(path)} ({type(exc).__name__}: {exc or 'no detail'}); check "
                             f"the network connection, or point --base-url at a mirror") from exc
        delay = min(2.0 ** attempt, 10.0)
        logger.info("%s: %s, retrying in %.0fs", path, exc, delay)
        await asyncio.sleep(delay)


def _total_from_content_range(value: str | None) -> int | None:
    """``bytes */12345`` → 12345."""
    if not value or "/" not in value:
        return None
    tail = value.rsplit("/", 1)[1].strip()
    return int(tail) if tail.isdigit() else None
