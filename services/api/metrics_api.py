"""``GET /metrics`` (Prometheus text format: this process's registry) and ``GET /status`` (the pipeline's figures
summed over every live replica: what the dashboard's status strip and ``sentinel watch`` show)."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Response
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from shared import metrics


class PipelineStatus(BaseModel):
    ts: int = Field(description="Wall-clock ms when the figures were summed.")
    figures: dict[str, int] = Field(
        description="Totals since each process started, summed over live replicas (trades_in, candles_closed, "
        "alerts_fired, notifications_sent, ...: the counters Prometheus scrapes), and levels (lag, pending, "
        "dead_letters). A rate is the difference of two readings over their time.",
        examples=[{"trades_in": 120400, "candles_closed": 812, "alerts_fired": 9, "notifications_sent": 9,
                   "lag": 0}])
    services: dict[str, int] = Field(description="Live replicas per service.", examples=[{"market_feed": 1}])


def mount(app: FastAPI, settings, redis: Redis, access) -> None:
    read = [Depends(access.require("read"))]

    @app.get("/metrics", dependencies=read, tags=["health"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                        401: {"description": "missing or invalid bearer token"}})
    async def get_metrics() -> Response:
        """This API process's metrics in Prometheus' text format (each service also serves its own on
        ``metrics_port``)."""
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE_LATEST)

    @app.get("/status", response_model=PipelineStatus, dependencies=read, tags=["health"],
             responses={401: {"description": "missing or invalid bearer token"}})
    async def get_status() -> PipelineStatus:
        """The pipeline's figures from every live replica's heartbeat."""
        return PipelineStatus(**await metrics.pipeline_figures(redis))
