"""The trials' report: counts per family and group, every failing trial, the passing ones with notes."""

from __future__ import annotations

from collections import Counter

from .runs import Trial

FAMILIES = ("resume", "signals", "bad", "kills")


def report(trials: list[Trial]) -> str:
    out = []
    for fam in FAMILIES:
        ts = [t for t in trials if t.family == fam]
        if not ts:
            continue
        out.append(f"\n== {fam}: {sum(t.ok for t in ts)}/{len(ts)} correct")
        noisy = sum(t.ok and any("not bitwise identical" in n for n in t.notes) for t in ts)
        if noisy:
            out.append(f"   ({noisy} of the correct ones within float32 noise of the reference, not bitwise)")
        groups = Counter(t.group for t in ts)
        w = max(len(g) for g in groups)
        for g in groups:
            gs = [t for t in ts if t.group == g]
            out.append(f"   {g:<{w}}  {sum(t.ok for t in gs):>3} / {len(gs):<3}")
    bad = [t for t in trials if not t.ok]
    out.append(f"\n== failing trials: {len(bad)}")
    for t in bad:
        out.append(f"- [{t.family}/{t.group}] {t.name}\n    $ {t.cmd}\n    -> {t.why}"
                   + (f"\n    notes: {'; '.join(t.notes)}" if t.notes else ""))
    noted = [t for t in trials if t.ok and t.notes and (t.family in ("resume", "bad") or any(
        "bitwise" in n or "orphaned" in n for n in t.notes))]
    if noted:
        out.append("\n== passing trials with notes")
        for t in noted:
            out.append(f"- [{t.family}/{t.group}] {t.name}: {'; '.join(t.notes)}")
    return "\n".join(out)
