"""Each serve process reports its open viewers per server to ``serve_viewers``, for ``/dzone status``.

Every ``DZONE_VIEWER_REPORT_INTERVAL_S`` one statement replaces this process's rows (servers without
viewers lose theirs) and removes rows silent for a day (a replica that died without cleaning up); on
close the process removes its own rows. A failed report is logged and retried at the next interval: the
counts are information for admins, never a reason to stop serving viewers.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import asyncpg
import structlog

from shared.db import DATABASE_ERRORS

log = structlog.get_logger(__name__)

REPORT = """
WITH gone AS (
    DELETE FROM serve_viewers
    WHERE (instance = $1 AND NOT server_id = ANY ($2::text[])) OR updated_at < now() - interval '1 day'
)
INSERT INTO serve_viewers AS v (instance, server_id, viewers, updated_at)
SELECT $1, s.server_id, s.viewers, now() FROM unnest($2::text[], $3::int[]) AS s(server_id, viewers)
ON CONFLICT (instance, server_id) DO UPDATE SET viewers = EXCLUDED.viewers, updated_at = now()
"""
FORGET = "DELETE FROM serve_viewers WHERE instance = $1"
REPORT_TIMEOUT_S = 5.0


class ViewerReport:
    """The periodic report of one serve process; ``counts`` says its viewers per server right now."""

    def __init__(
        self, pool: asyncpg.Pool, counts: Callable[[], Mapping[str, int]], interval_s: float, port: int
    ) -> None:
        self.pool = pool
        self.counts = counts
        self.interval_s = interval_s
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{port}"
        self.failures = 0

    async def report(self) -> None:
        counts = {server_id: n for server_id, n in self.counts().items() if n > 0}
        await self.pool.execute(
            REPORT, self.instance, list(counts), list(counts.values()), timeout=REPORT_TIMEOUT_S
        )

    async def run(self) -> None:
        while True:
            try:
                await self.report()
            except DATABASE_ERRORS as exc:
                self.failures += 1
                log.warning(
                    "viewer_report_failed", error=f"{type(exc).__name__}: {exc}", instance=self.instance
                )
            await asyncio.sleep(self.interval_s)

    async def forget(self) -> None:
        """Remove this process's rows (at close; a failure leaves them to expire from /dzone status)."""
        try:
            await self.pool.execute(FORGET, self.instance, timeout=REPORT_TIMEOUT_S)
        except DATABASE_ERRORS as exc:
            log.warning(
                "viewer_report_not_removed", error=f"{type(exc).__name__}: {exc}", instance=self.instance
            )
