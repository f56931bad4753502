"""An output's ledger: the tiles written (``geors_tiles``) and the runs that wrote them (``geors_runs``).

SQL over an open ``sqlite3`` connection: :class:`geors.vector.GeoPackageWriter`
calls these inside its transactions, :func:`geors.outputs.read_output_state`
on a read-only connection before anything is written. A run row records its
process (host, pid) and start time, so a later run can tell a ``running`` row
left by a process that is gone (abandoned: marked ``interrupted`` on
``--resume``) from one that is still writing (:func:`live_runs`); liveness
comes from :func:`geors.output_lock.process_alive`.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
from datetime import UTC, datetime

from geors.output_lock import process_alive

__all__ = ["RUN_STATUSES", "new_run_id", "run_row", "set_run_status", "read_runs", "live_runs", "abandoned_runs",
           "mark_interrupted", "finished_tiles"]

#: values of ``geors_runs.status``
RUN_STATUSES = ("running", "finished", "cancelled", "failed", "interrupted")


def new_run_id() -> str:
    """A sortable unique run id: UTC timestamp + random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_row(run_id: str, command: str, config: dict, models: dict | None = None) -> dict:
    """The ``geors_runs`` row of a run starting now in this process: version, config and models as JSON,
    host and pid, status ``running``."""
    from geors import __version__

    return {"run_id": run_id, "geors_version": __version__, "command": command,
            "config": json.dumps(config, default=str, sort_keys=True),
            "models": json.dumps(models or {}, default=str, sort_keys=True),
            "started": _now(), "finished": None, "status": "running",
            "host": socket.gethostname(), "pid": os.getpid()}


def set_run_status(con: sqlite3.Connection, run_id: str, status: str) -> None:
    """Close a run's row: ``finished``, ``cancelled``, ``failed`` or ``interrupted``, with the time."""
    if status not in RUN_STATUSES or status == "running":
        raise ValueError(f"run status must be one of {RUN_STATUSES[1:]}, got {status!r}")
    con.execute('UPDATE "geors_runs" SET finished = ?, status = ? WHERE run_id = ?', (_now(), status, run_id))


def _decoded(text) -> dict:
    try:
        value = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_runs(con: sqlite3.Connection) -> list[dict]:
    """The ``geors_runs`` rows in the order they were written, as dicts; ``config`` and ``models`` decoded
    from JSON (``{}`` when missing or unreadable)."""
    cur = con.execute('SELECT * FROM "geors_runs" ORDER BY fid')
    names = [d[0] for d in cur.description]
    out = []
    for values in cur.fetchall():
        row = dict(zip(names, values, strict=True))
        for key in ("config", "models"):
            row[key] = _decoded(row.get(key))
        out.append(row)
    return out


def _alive(run: dict, host: str) -> bool:
    """A run's process still runs; one on another host counts as alive (it cannot be checked from here), one
    without a pid (written by a geors that did not record it) as gone."""
    pid = run.get("pid")
    if pid is None:
        return False
    return run.get("host") != host or int(pid) == os.getpid() or process_alive(int(pid), run.get("started"))


def live_runs(runs: list[dict], exclude_run_id: str | None = None) -> list[dict]:
    """Runs still ``running`` in a live process (other hosts count as live), ``exclude_run_id`` left out."""
    host = socket.gethostname()
    return [r for r in runs if r["status"] == "running" and r["run_id"] != exclude_run_id and _alive(r, host)]


def abandoned_runs(runs: list[dict], exclude_run_id: str | None = None) -> list[str]:
    """Ids of the runs left ``running`` by a process that is gone (its pid no longer runs on this host, or now
    belongs to a younger process; rows without a pid count as abandoned), ``exclude_run_id`` left out."""
    host = socket.gethostname()
    return [r["run_id"] for r in runs
            if r["status"] == "running" and r["run_id"] != exclude_run_id and not _alive(r, host)]


def mark_interrupted(con: sqlite3.Connection, run_ids: list[str]) -> None:
    """Set the ``running`` rows of ``run_ids`` to ``interrupted`` (inside the caller's transaction)."""
    con.executemany('UPDATE "geors_runs" SET status = \'interrupted\' WHERE run_id = ? AND status = \'running\'',
                    [(r,) for r in run_ids])


def finished_tiles(con: sqlite3.Connection, scene: str | None = None) -> dict[str, dict[str, tuple]]:
    """Tiles committed by any run and not failed: scene -> tile id -> window ``(col_off, row_off, width,
    height)``; only ``scene``'s when given."""
    sql = ('SELECT scene, tile_id, col_off, row_off, width, height FROM "geors_tiles" '
           "WHERE status != 'failed'")
    params: tuple = ()
    if scene is not None:
        sql, params = sql + " AND scene = ?", (scene,)
    out: dict[str, dict[str, tuple]] = {}
    for s, tile_id, c, r, w, h in con.execute(sql, params):
        out.setdefault(s, {})[tile_id] = (c, r, w, h)
    return out
