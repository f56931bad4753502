"""What a run did: the summary every command prints (people: ``lines()``; programs: ``to_dict()``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from geors.results import TileResult

__all__ = ["RunSummary", "tally", "empty_detections_hint", "nodata_hint", "add_hint", "NODATA_HINT",
           "NODATA_BOXES_HINT"]

#: The hint of a run whose every tile was nodata (any command: detect, run, segment, tiles, ...).
NODATA_HINT = ("every tile was nodata: check the scene's nodata value and --bands (`geors info SCENE`); nothing "
               "was detected or outlined there")
#: The hint of a run of given boxes (geors masks, label) whose every tile was nodata: the boxes are answered,
#: but with nothing but nodata to go by.
NODATA_BOXES_HINT = ("every tile was nodata: check the scene's nodata value and --bands (`geors info SCENE`); the "
                     "given boxes lie on nodata, so they were outlined as their boxes")


@dataclass
class RunSummary:
    """What a run did; ``to_dict`` is the machine-readable summary every command prints."""

    run_id: str
    output: str
    status: str = "running"
    scenes: int = 0
    scenes_skipped: list[dict] = field(default_factory=list)
    tiles: int = 0
    done: int = 0
    gated: int = 0
    nodata: int = 0
    failed: int = 0
    skipped_resume: int = 0
    detections: int = 0
    below_threshold: int = 0  # detections written below the score threshold (--min-score), within ``detections``
    instances: int = 0
    segments: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    mask_methods: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    crs: str = ""
    reprojected_scenes: list[str] = field(default_factory=list)
    # given boxes (geors masks / label) without an outline: {"scene", "tile_id", "box_fid", "reason"}
    boxes_unanswered: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # command-specific results (e.g. the label raster written)
    hints: list[str] = field(default_factory=list)  # what to try (e.g. a run that found nothing)

    @property
    def processed(self) -> int:
        return self.done + self.gated

    @property
    def saved(self) -> int:
        """Tiles whose results are committed (done, gated or nodata), this run and earlier ones."""
        return self.done + self.gated + self.nodata + self.skipped_resume

    def to_dict(self) -> dict:
        d = asdict(self)
        d["processed"] = self.processed
        d["mp_per_s"] = round(self.megapixels / self.seconds, 3) if self.seconds else None
        d["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        return d

    def lines(self) -> list[str]:
        """The summary for people (stderr)."""
        out = [f"{self.status}: {self.scenes} scene(s) -> {self.output}  (run {self.run_id})",
               f"  tiles: {self.tiles} = {self.done} done, {self.gated} gated, {self.nodata} nodata, "
               f"{self.failed} failed, {self.skipped_resume} already done"]
        feats = [f"{n} {k}" for k, n in (("detections", self.detections), ("instances", self.instances),
                                          ("segments", self.segments)) if n]
        if feats:
            out.append("  features: " + ", ".join(feats)
                       + (f"  ({self.below_threshold} detections below the score threshold, passes_threshold = 0)"
                          if self.below_threshold else ""))
        if self.per_class:
            out.append("  per class: " + ", ".join(f"{k} {v}" for k, v in sorted(self.per_class.items())))
        if self.mask_methods:
            out.append("  masks by: " + ", ".join(f"{k} {v}" for k, v in sorted(self.mask_methods.items()))
                       + (f"  ({self.fallbacks} fell back to the box)" if self.fallbacks else ""))
        if self.seconds:
            shares = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.stage_seconds.items()))
            out.append(f"  {self.seconds:.1f} s, {self.megapixels:.1f} MP, "
                       f"{self.megapixels / self.seconds:.2f} MP/s" + (f"  (worker time: {shares})" if shares else ""))
        if self.reprojected_scenes:
            out.append(f"  reprojected into {self.crs}: {', '.join(self.reprojected_scenes)}")
        for s in self.scenes_skipped:
            out.append(f"  skipped {s['path']}: {s['reason']}")
        for h in self.hints:
            out.append(f"  hint: {h}")
        if self.boxes_unanswered:
            from geors.stages import unanswered_message

            out.append(f"  {len(self.boxes_unanswered)} given box(es) without an outline: "
                       + unanswered_message(self.boxes_unanswered, n=10))
        return out


def nodata_hint(summary: RunSummary) -> str | None:
    """:data:`NODATA_HINT` when this run's tiles were all nodata (None when one was processed or none was seen);
    :data:`NODATA_BOXES_HINT` when given boxes were outlined there (geors masks, label: no detections)."""
    if summary.status != "finished" or summary.done or summary.gated or summary.failed or not summary.nodata:
        return None
    return NODATA_BOXES_HINT if summary.instances and not summary.detections else NODATA_HINT


def add_hint(summary: RunSummary, hint: str | None) -> None:
    """Append ``hint`` to the summary's hints once."""
    if hint and hint not in summary.hints:
        summary.hints.append(hint)


def empty_detections_hint(summary: RunSummary, score_threshold: float | None = None) -> str | None:
    """What to try when a detection run wrote no detection (None when it wrote some or saw no tile)."""
    if summary.detections or summary.status != "finished":
        return None
    if not (summary.done or summary.gated or summary.nodata):
        return None  # nothing processed in this run (all tiles done before, or no tile)
    if not (summary.done or summary.gated):
        return nodata_hint(summary)
    if not summary.done:
        return ("the gate skipped every tile: rerun with --no-gate or a lower --gate-threshold into another "
                "output; check the warnings above about the scene and the model")
    at = f" {score_threshold:g}" if score_threshold is not None else ""
    return (f"no detection scored at least the score threshold{at} on {summary.done} tile(s): rerun with "
            "--min-score 0.05 to see the low scores, a lower --score-threshold or --no-gate, check the warnings "
            "above (bands, data type, GSD) and look at the scene with `geors preview`; a model trained on this "
            "imagery (`geors train detector`) helps most")


def tally(summary: RunSummary, results: list[TileResult]) -> None:
    """Add a written batch's tiles and features to the summary."""
    for r in results:
        if r.status in ("done", "gated", "nodata", "failed"):
            setattr(summary, r.status, getattr(summary, r.status) + 1)
        summary.detections += len(r.detections)
        summary.instances += len(r.instances)
        summary.segments += len(r.segmentation)
        for d in r.detections:
            if not d.passes_threshold:
                summary.below_threshold += 1
                continue
            summary.per_class[d.class_name] = summary.per_class.get(d.class_name, 0) + 1
        for i in r.instances:
            summary.mask_methods[i.mask_method] = summary.mask_methods.get(i.mask_method, 0) + 1
            summary.fallbacks += i.mask_method.endswith(":fallback")
        for k, v in r.stage_seconds.items():
            summary.stage_seconds[k] = summary.stage_seconds.get(k, 0.0) + v
        summary.boxes_unanswered += [{"scene": r.scene, "tile_id": r.tile_id, **u} for u in r.unanswered]
