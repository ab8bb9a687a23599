"""Wiring of the API: the FastAPI app over Redis (``create_app``) and ``ApiApp`` that serves it with uvicorn.

Every endpoint but ``/health`` needs ``Authorization: Bearer <token>`` when ``SENTINEL_API_TOKEN`` (or the read-only
``SENTINEL_API_READ_TOKEN``) is set, ``/openapi.json`` included; without a token the server binds to loopback only.
Pages and their scripts (the dashboard, ``/docs``, ``/redoc``, all shipped in ``static/``: no CDN) load without one,
but everything they fetch needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import socket
import logging
from pathlib import Path
from typing import Annotated, Literal

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from services.api import health, queries
from services.api.models import (AlertHistory, AlertItem, AlertStatus, CandleSeries, CvdSeries, Health,
                                 Problem, RuleStateOut, SeriesList, TickerOut)
from services.api.settings import LOOPBACK, Settings
from services.api.trades_relay import TradesRelay
from shared.errors import SentinelError
from shared.runtime import heartbeat
from shared.timeframes import SUPPORTED

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_LOOPBACKS = {"127.0.0.1", "::1", "localhost"}
Timeframe = Literal[SUPPORTED]  # type: ignore[valid-type]
SymbolPath = Annotated[str, PathParam(description="BTC-USDT, or BTC/USDT URL-encoded as BTC%2FUSDT.",
                                      examples=["BTC-USDT"])]
_bearer = HTTPBearer(auto_error=False, description="SENTINEL_API_TOKEN (read and write) or SENTINEL_API_READ_TOKEN.")


class ApiStartError(SentinelError):
    """The API cannot listen where it is configured to (a busy port, an address this machine does not have)."""


def normalize_symbol(symbol: str) -> str:
    """``BTC-USDT`` or ``BTC/USDT`` (URL-encoded ``BTC%2FUSDT``) → ``BTC/USDT``."""
    return symbol if "/" in symbol else symbol.replace("-", "/", 1)


class Access:
    """Bearer-token checks: ``read`` accepts either token, ``write`` only the full one. No token set = open."""

    def __init__(self, settings: Settings) -> None:
        self.full = settings.api_token.get_secret_value() if settings.api_token else None
        self.read_only = settings.api_read_token.get_secret_value() if settings.api_read_token else None

    @property
    def enabled(self) -> bool:
        return bool(self.full or self.read_only)

    def level(self, token: str | None) -> str | None:
        """'write', 'read' or None for a presented token."""
        if not self.enabled:
            return "write"
        if token is None:
            return None
        if self.full and hmac.compare_digest(token.encode(), self.full.encode()):
            return "write"
        if self.read_only and hmac.compare_digest(token.encode(), self.read_only.encode()):
            return "read"
        return None

    def require(self, needed: str):
        async def dependency(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
            level = self.level(credentials.credentials if credentials else None)
            if level is None:
                raise HTTPException(status_code=401, detail="missing or invalid bearer token",
                                    headers={"WWW-Authenticate": "Bearer"})
            if needed == "write" and level != "write":
                raise HTTPException(status_code=403, detail="this token is read-only")
            return level
        return dependency


def create_app(settings: Settings, redis: Redis) -> FastAPI:
    """The API over ``redis``. The caller owns ``redis`` (the app never closes it)."""
    access = Access(settings)
    app = FastAPI(
        title="sentinel API",
        version="1",
        description="Alert status, alert history and market data of sentinel. Decimals are JSON strings.",
        openapi_url=None, docs_url=None, redoc_url=None,  # served below: the document behind the token, no CDN
    )
    app.state.redis = redis
    app.state.settings = settings
    app.state.access = access
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"])
    read = [Depends(access.require("read"))]
    limits = health.Limits(heartbeat_max_age_s=settings.heartbeat_max_age_s,
                           max_consumer_lag=settings.max_consumer_lag, max_pending=settings.max_pending,
                           max_pending_idle_ms=settings.max_pending_idle_ms)
    errors = {401: {"model": Problem, "description": "missing or invalid bearer token"},
              404: {"model": Problem, "description": "the path matches no route (e.g. a malformed segment)"},
              422: {"model": Problem, "description": "invalid parameter"}}

    @app.get("/health", response_model=Health, tags=["health"],
             responses={503: {"model": Health, "description": "something is down; `problems` says what"}})
    async def get_health() -> JSONResponse:
        healthy, report = await health.health(redis, settings.services, limits, settings.partitions)
        return JSONResponse(Health.model_validate(report).model_dump(mode="json"), status_code=200 if healthy else 503)

    @app.get("/alerts", response_model=AlertStatus, dependencies=read, tags=["alerts"], responses=errors)
    async def get_alerts(
        rule: Annotated[str | None, Query(description="Only this rule.")] = None,
        symbol: Annotated[str | None, Query(description="Only this symbol (BTC/USDT or BTC-USDT).")] = None,
        state: Annotated[str | None, Query(description="Only this state, e.g. firing.")] = None,
    ) -> AlertStatus:
        """Every rule × series the engine keeps state for: state, last fired, cooldown left, next eligible time."""
        sym = normalize_symbol(symbol) if symbol else None
        states = [s for s in await queries.rule_states(redis)
                  if (rule is None or s.rule == rule) and (sym is None or s.symbol == sym)
                  and (state is None or s.state == state)]
        return AlertStatus(rules=[RuleStateOut(**{f: getattr(s, f) for f in RuleStateOut.model_fields})
                                  for s in states])

    @app.get("/alerts/history", response_model=AlertHistory, dependencies=read, tags=["alerts"], responses=errors)
    async def get_alert_history(
        rule: Annotated[str | None, Query(description="Only this rule.")] = None,
        symbol: Annotated[str | None, Query(description="Only this symbol (BTC/USDT or BTC-USDT).")] = None,
        exchange: Annotated[str | None, Query()] = None,
        start: Annotated[int | None, Query(ge=0, description="fired_at ≥ start (ms).")] = None,
        end: Annotated[int | None, Query(ge=0, description="fired_at ≤ end (ms).")] = None,
        cursor: Annotated[str | None, Query(pattern=r"^\d+-\d+(-\d+)?$", description="next_cursor of the previous page.")]
        = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AlertHistory:
        """Alerts newest first, filtered, one page at a time."""
        page = await queries.alert_history(
            redis, rule=rule, symbol=normalize_symbol(symbol) if symbol else None, exchange=exchange, start=start,
            end=end, cursor=cursor, limit=limit, scan_limit=settings.history_scan_limit)
        return AlertHistory(items=[AlertItem(cursor=c, alert=a) for c, a in page.items], next_cursor=page.next_cursor)

    @app.get("/series", response_model=SeriesList, dependencies=read, tags=["market"], responses=errors)
    async def get_series() -> SeriesList:
        """Every (exchange, symbol, timeframe) with candles."""
        return SeriesList(series=[{"exchange": e, "symbol": s, "timeframe": t} for e, s, t in
                                  await queries.series(redis, settings.partitions)])

    @app.get("/candles/{exchange}/{symbol:path}/{timeframe}", response_model=CandleSeries, dependencies=read,
             tags=["market"], responses=errors)
    async def get_candles(
        exchange: str,
        symbol: SymbolPath,
        timeframe: Timeframe,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
        since: Annotated[int | None, Query(ge=0, description="First bucket start (ms); default = the latest.")]
        = None,
        live: Annotated[bool, Query(description="Add the in-progress candle.")] = False,
    ) -> JSONResponse:
        """Closed candles (the latest revision of each bucket), ascending; optionally the in-progress one."""
        sym = normalize_symbol(symbol)
        candles = await queries.closed_candle_maps(redis, exchange, sym, timeframe, settings.partitions, limit=limit,
                                                    since=since)
        current = await queries.live_candle(redis, exchange, sym, timeframe, settings.partitions) if live else None
        if current is not None and candles and current.ts <= candles[-1]["ts"]:
            current = None
        # the maps are already what the response model would serialize: skip FastAPI's re-validation
        return JSONResponse({"exchange": exchange, "symbol": sym, "timeframe": timeframe, "candles": candles,
                             "live": current.model_dump(mode="json") if current else None})

    @app.get("/ticker/{exchange}/{symbol:path}", response_model=TickerOut, dependencies=read, tags=["market"],
             responses=errors)
    async def get_ticker(exchange: str, symbol: SymbolPath) -> TickerOut:
        """The latest ticker (best bid/ask, last) market_feed published; null when none."""
        ticker = await queries.latest_ticker(redis, exchange, normalize_symbol(symbol), settings.partitions)
        return TickerOut(ticker=ticker)

    @app.get("/cvd/{exchange}/{symbol:path}/{timeframe}", response_model=CvdSeries, dependencies=read,
             tags=["market"], responses=errors)
    async def get_cvd(
        exchange: str,
        symbol: SymbolPath,
        timeframe: Timeframe,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
        since: Annotated[int | None, Query(ge=0)] = None,
        live: Annotated[bool, Query()] = True,
    ) -> JSONResponse:
        """Cumulative volume delta (taker buy − taker sell volume) over the candles returned, in-progress one last."""
        sym = normalize_symbol(symbol)
        candles = await queries.closed_candle_maps(redis, exchange, sym, timeframe, settings.partitions, limit=limit,
                                                    since=since)
        current = await queries.live_candle(redis, exchange, sym, timeframe, settings.partitions) if live else None
        points = [{"ts": ts, "delta": str(d), "cvd": str(c)} for ts, d, c in queries.cvd(candles, current)]
        return JSONResponse({"exchange": exchange, "symbol": sym, "timeframe": timeframe, "points": points})

    _mount_docs(app, read)  # before the dashboard's static files, which are mounted at /
    _mount_extras(app, settings, redis, access)
    return app


def _mount_docs(app: FastAPI, read: list) -> None:
    """``/openapi.json`` behind the read token; ``/docs`` (Swagger UI) and ``/redoc`` from the package's files."""

    @app.get("/openapi.json", dependencies=read, include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    if STATIC_DIR.joinpath("docs.html").exists():  # one page; its script picks the viewer by the path
        for path in ("/docs", "/redoc"):
            app.add_api_route(path, _page(STATIC_DIR / "docs.html"), methods=["GET"], include_in_schema=False)


def _page(file: Path):
    async def page() -> FileResponse:
        return FileResponse(file, media_type="text/html")
    return page


def _mount_extras(app: FastAPI, settings: Settings, redis: Redis, access: Access) -> None:
    """Routers added by later increments (live stream, rules, notifications, dashboard), each optional."""
    with contextlib.suppress(ImportError):
        from services.api import live
        live.mount(app, settings, redis, access)
    with contextlib.suppress(ImportError):
        from services.api import rules_api
        rules_api.mount(app, settings, redis, access)
    with contextlib.suppress(ImportError):
        from services.api import books_api
        books_api.mount(app, settings, redis, access)
    with contextlib.suppress(ImportError):
        from services.api import notifications_api
        notifications_api.mount(app, settings, redis, access)
    with contextlib.suppress(ImportError):
        from services.api import metrics_api
        metrics_api.mount(app, settings, redis, access)
    if STATIC_DIR.joinpath("index.html").exists():
        from fastapi.staticfiles import StaticFiles
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="dashboard")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the stop event (set by run_service's handlers) stops it."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


def bind_host(settings: Settings) -> str:
    """The address to bind: the configured one, or loopback when no token protects the API."""
    if settings.api_token or settings.api_read_token or settings.host in _LOOPBACKS:
        return settings.host
    return LOOPBACK


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio then sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = ("another program listens there (another `sentinel up` or `sentinel api`?): stop it, or choose another "
                "port with api.port in the settings file or SENTINEL_API_PORT (0 = any free port)")
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
            hint = "check api.host / SENTINEL_API_HOST"
        raise ApiStartError(f"the API could not start on {host}:{port}: {exc.strerror}; {hint}") from exc
    sock.set_inheritable(True)
    return sock


def check_port(settings: Settings) -> None:
    """ApiStartError now if the API could not listen where configured (``sentinel up`` checks before it starts
    anything); the port is free again when this returns."""
    if settings.port:
        _bind(bind_host(settings), settings.port).close()


class ApiApp:
    """Serves ``create_app(settings, redis)`` with uvicorn until ``stop`` is set."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.app = create_app(settings, redis)
        self.host = bind_host(settings)
        self.port: int | None = None  # the bound port once started
        self.started = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        if not (settings.api_token or settings.api_read_token):
            if self.host != settings.host:
                logger.warning("no SENTINEL_API_TOKEN set: binding to %s instead of %s (loopback only)",
                               self.host, settings.host)
            else:
                logger.warning("no SENTINEL_API_TOKEN set: the API is open, bound to loopback %s only", self.host)
        config = uvicorn.Config(self.app, host=self.host, port=settings.port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=settings.shutdown_grace_s, ws="websockets-sansio")
        server = _Server(config)
        sock = _bind(self.host, settings.port)  # bound here: uvicorn would sys.exit() on a busy port
        task = asyncio.create_task(server.serve(sockets=[sock]), name="api-uvicorn")
        waiter = asyncio.create_task(stop.wait(), name="api-stop")
        beat_stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(self.redis, "api", beat_stop, lambda: {"url": self.url}), name="api-beat")
        relay = asyncio.create_task(TradesRelay(self.redis, partitions=settings.partitions,
                                                throttle_ms=settings.trades_throttle_ms).run(beat_stop),
                                    name="api-trades-relay")
        try:
            while not server.started and not task.done():
                await asyncio.sleep(0.01)
            if server.started:
                self.port = server.servers[0].sockets[0].getsockname()[1]
                logger.info("API listening on %s", self.url)
                self.started.set()
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            server.should_exit = True
            beat_stop.set()
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            for helper in (beat, relay):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            await task
            sock.close()
