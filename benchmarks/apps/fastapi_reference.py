"""What teams build by hand today, per the original integration guide, done right enough to compare:
FastAPI + uvicorn, a ``Depends`` that reads the bearer token, checks Redis (5 minutes) and else
queries Better Auth's tables with a pooled asyncpg connection. No signature check (raw bearer).

    DATABASE_URL=... REDIS_URL=... uvicorn benchmarks.apps.fastapi_reference:app --loop uvloop --http httptools
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Header, HTTPException, Request

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SQL = """
SELECT u.id, u.email, u.name, s."expiresAt" FROM "session" s JOIN "user" u ON u.id = s."userId"
WHERE s.token = $1 AND s."expiresAt" > now()
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=2, max_size=10)
    app.state.redis = aioredis.Redis.from_url(os.environ["REDIS_URL"], max_connections=64)
    yield
    await app.state.pool.close()
    await app.state.redis.aclose()


app = FastAPI(lifespan=lifespan)


async def current_user(request: Request, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(401, "not authenticated")
    token = authorization[7:].strip()
    cached = await request.app.state.redis.get(f"session:{token}")
    if cached:
        return json.loads(cached)
    row = await request.app.state.pool.fetchrow(SQL, token)
    if row is None:
        raise HTTPException(401, "invalid session")
    user = {"id": row["id"], "email": row["email"], "name": row["name"]}
    await request.app.state.redis.set(f"session:{token}", json.dumps(user), ex=300)
    return user


@app.get("/validate")
async def validate(user: Annotated[dict[str, Any], Depends(current_user)]) -> dict[str, Any]:
    return {"user": user}
