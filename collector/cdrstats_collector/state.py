"""What the request handlers share, opened in the app's lifespan (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from .agents import AgentDirectory
from .metrics import Metrics
from .settings import Settings
from .store import Ingestor


@dataclass(slots=True)
class CollectorState:
    settings: Settings
    pool: AsyncConnectionPool[Any]
    ingestor: Ingestor
    agents: AgentDirectory
    metrics: Metrics


def get_state(request: Request) -> CollectorState:
    state: CollectorState = request.app.state.collector
    return state
