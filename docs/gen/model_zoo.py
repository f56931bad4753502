"""The model zoo table, written from ``geors models list --json`` and ``geors models info NAME --json``.

Run alone to print it: ``python docs/gen/model_zoo.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

# metadata keys worth showing per model file (the rest is in `geors models info NAME --json`)
SHOWN = ("architecture", "classes", "bands", "tile_size", "overlap", "gsd_m", "gate_threshold", "normalisation",
         "anchor_scales", "small_classes", "geors_version")


def _cli(*args: str):
    from geors.cli.main import main

    r = CliRunner().invoke(main, list(args))
    if r.exit_code != 0:
        raise RuntimeError(f"geors {' '.join(args)} failed ({r.exit_code}): {r.output}")
    return json.loads(r.stdout)


def _where(row: dict) -> str:
    path = Path(row.get("path", ""))
    if "weights" in path.parts:
        if not row.get("installed"):
            return f"registered at `geors/models/weights/{path.name}`, not in this build"
        return f"shipped: `geors/models/weights/{path.name}`"
    if row.get("url"):
        return f"`geors models download {row['name']}` → `$GEORS_CACHE_DIR/models/{path.name}`"
    return f"`{path.name}`"


def _v(value) -> str:
    return "–" if value is None else str(value)


def _size(row: dict) -> str:
    n = row.get("size_bytes")
    if n is None and row.get("installed") and row.get("path"):
        n = Path(row["path"]).stat().st_size
    return f"{n / 2**20:.1f} MiB" if n else "–"


def markdown() -> str:
    rows = _cli("models", "list", "--json")
    out = ["| name | kind | classes | bands | tile (px) | GSD (m) | size |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        classes = ", ".join(r.get("classes", [])) or "(any object: box prompts)" if r.get("kind") == "sam" else \
            ", ".join(r.get("classes", [])) or "–"
        default = " (default)" if r.get("default") else ""
        sam = r.get("kind") == "sam"
        bands = _v(r.get("bands", 3 if sam else None))
        tile = _v(r.get("tile_size", 1024 if sam else None))
        out.append(f"| `{r['name']}`{default} | {r.get('kind', '')} | {classes} | {bands} | {tile} "
                   f"| {_v(r.get('gsd_m'))} | {_size(r)} |")
    out.append("\nWhere each file comes from (and its sha256, first 12 hex digits):\n")
    for r in rows:
        sha = f", sha256 `{r['sha256'][:12]}…`" if r.get("sha256") else ""
        out.append(f"- `{r['name']}`: {_where(r)}{sha}")
    out.append("")
    for r in rows:
        if r.get("kind") == "sam" or not r.get("installed"):
            continue
        try:
            info = _cli("models", "info", r["name"], "--json")
        except RuntimeError as exc:  # shown on the page rather than failing the whole site
            out.append(f"### `{r['name']}` metadata\n\n`geors models info {r['name']} --json` failed: {exc}\n")
            continue
        meta = info.get("metadata", info)
        shown = {k: meta[k] for k in SHOWN if k in meta}
        out.append(f"### `{r['name']}` metadata\n")
        out.append(f"From `geors models info {r['name']} --json` (selected keys; the command prints all):\n")
        out.append("```json\n" + json.dumps(shown, indent=2) + "\n```\n")
    missing = [r["name"] for r in rows if r.get("kind") != "sam" and not r.get("installed")]
    if missing:
        out.append("Registered but not installed in this build: " + ", ".join(f"`{m}`" for m in missing) + ".\n")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
