"""``GET /notifications``: recent delivery outcomes and dead letters of the notifier (its own readers)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from shared.notify_history import dead_letters, recent_deliveries


class Delivery(BaseModel):
    id: str = Field(examples=["1723161300000-0"])
    ts: int = Field(description="Wall-clock ms of the outcome.")
    target: str = Field(examples=["console"])
    status: str = Field(examples=["delivered"], description="delivered or dead")
    count: int = Field(description="Alerts in this message (alerts are batched per target).")
    alert_ids: list[str]
    attempts: int
    reason: str = ""


class DeadLetter(BaseModel):
    id: str
    ts: int
    alert_id: str
    target: str
    reason: str
    attempts: int
    alert: dict[str, Any] | None = Field(description="The alert, or null if the stored copy cannot be decoded.")


class Notifications(BaseModel):
    deliveries: list[Delivery]
    dead_letters: list[DeadLetter]


def mount(app: FastAPI, settings, redis: Redis, access) -> None:
    @app.get("/notifications", response_model=Notifications, dependencies=[Depends(access.require("read"))],
             tags=["notifications"], responses={401: {"description": "missing or invalid bearer token"}})
    async def get_notifications(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Notifications:
        """What the notifier delivered (or gave up on) lately, newest first, and its dead letters."""
        return Notifications(deliveries=await recent_deliveries(redis, limit),
                             dead_letters=await dead_letters(redis, limit))
