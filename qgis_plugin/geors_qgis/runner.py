"""Run one geors command in a subprocess and translate its output into Processing feedback.

stdout carries ``--progress jsonl`` events (``start``/``progress``/``end``) and a
final JSON summary line; stderr carries log lines and ``Error: ...`` messages.
Cancelling sends SIGINT first, so geors stops between batches and marks the run
cancelled in the GeoPackage (every committed batch stays, ``--resume`` continues),
then terminates and finally kills the process if it does not stop in time.

Standard library only: ``feedback`` is anything with the QgsProcessingFeedback
methods used here (``isCanceled``, ``setProgress``, ``setProgressText``,
``pushInfo``, ``pushWarning``, ``pushConsoleInfo``, ``pushDebugInfo``,
``pushCommandInfo``, ``reportError``).
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from .environment import GeorsEnvironment, _no_window, subprocess_env

INTERRUPT_GRACE_S = 30.0
"""Seconds geors gets after SIGINT to finish the batch in flight before it is terminated."""

TERMINATE_GRACE_S = 5.0


@dataclass
class RunResult:
    """How a geors command ended.

    Attributes:
        returncode: the process exit status (0 ok, 1 processing failure, 2 bad input).
        cancelled: the user cancelled it.
        summary: the command's JSON summary (``{"event": "summary", ...}``, or a JSON line without ``event``).
        errors: ``Error: ...`` lines from stderr, without the prefix.
        stderr_tail: the last stderr lines, for messages when something unexpected happened.
    """

    returncode: int
    cancelled: bool = False
    summary: dict | None = None
    errors: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    stdout_lines: list[str] = field(default_factory=list)
    jsonl_progress: bool = False  # the command reports progress as JSON lines (else step log lines are read)
    started_at: float = field(default_factory=time.monotonic)

    def parsed_stdout(self) -> dict | None:
        """The summary, or the whole non-event stdout parsed as one JSON document (``indent=2`` output)."""
        if self.summary is not None:
            return self.summary
        try:
            obj = json.loads("\n".join(self.stdout_lines))
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None


def _pump(stream, tag: str, q: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        q.put((tag, line.rstrip("\r\n")))
    q.put((tag, None))


def _interrupt(proc: subprocess.Popen) -> None:
    if sys.platform == "win32":
        proc.send_signal(signal.CTRL_BREAK_EVENT)  # the child has its own process group
    else:
        proc.send_signal(signal.SIGINT)


class _ProgressMap:
    """Maps per-scene ``start``/``progress`` events onto one 0..100 bar over ``n_scenes`` scenes."""

    def __init__(self, n_scenes: int):
        self.n = max(1, n_scenes)
        self.index = -1

    def start(self) -> None:
        self.index = min(self.index + 1, self.n - 1)

    def percent(self, done: int, total: int) -> float:
        frac = done / total if total else 1.0
        return 100.0 * (max(self.index, 0) + frac) / self.n


TRAINING = "training"
"""``desc`` of the training commands' progress events (steps, not tiles; ``steps`` is the current plan)."""

# A training step line on stderr: the detector's log "step 40/300 loss=... | 12 s, ETA 95 s", geors train
# segmenter's "coarse step 40/300  loss 0.1234  eta 1m35s" (it has no --progress jsonl) and its log
# "coarse step 40/300 loss 0.1234 eta 95s".
_STEP_LINE = re.compile(r"\b(?:(\w+) +)?step (\d+)/(\d+)\b.*?\beta:? ?(?:(\d+)h)?(?:(\d+)m)?(\d+(?:\.\d+)?) ?s\b",
                        re.IGNORECASE)


def eta_text(seconds: float) -> str:
    """``1 h 05 min``, ``3 min 20 s`` or ``45 s``."""
    s = max(0, int(round(float(seconds))))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _training_event(obj: dict, feedback, bar: _ProgressMap, result: RunResult) -> None:
    """A training progress event: the bar over the planned steps, the time left in the progress text."""
    done, total = int(obj.get("done", 0)), int(obj.get("steps") or obj.get("total") or 0)
    feedback.setProgress(bar.percent(min(done, total), total))
    if "val_AP50" in obj:
        best = obj.get("best")
        feedback.pushInfo(f"step {done}/{total}: validation AP50 {float(obj['val_AP50']):.3f}"
                          + (f" (best {float(best):.3f})" if best is not None else ""))
        return
    loss = obj.get("loss")
    text = f"training: step {done}/{total}" + (f", loss {float(loss):.3f}" if loss is not None else "")
    if obj.get("eta_s") is not None:
        text += f", {eta_text(obj['eta_s'])} left"
    feedback.setProgressText(text)
    every = max(1, total // 20)
    if done == 1 or done % every == 0:  # a log line every 5% of the plan, not one per step
        feedback.pushConsoleInfo(text)


def handle_stdout_line(line: str, feedback, bar: _ProgressMap, result: RunResult) -> None:
    """One stdout line: a progress event, the summary, or plain text."""
    text = line.strip()
    if not text:
        return
    try:
        obj = json.loads(text)
    except ValueError:
        result.stdout_lines.append(line)
        feedback.pushConsoleInfo(text)
        return
    if not isinstance(obj, dict):
        result.stdout_lines.append(line)
        feedback.pushConsoleInfo(text)
        return
    event = obj.get("event")
    if event in ("start", "progress", "end"):
        result.jsonl_progress = True
    training = obj.get("desc") == TRAINING
    if event == "progress" and training:
        _training_event(obj, feedback, bar, result)
    elif event == "start":
        bar.start()
        unit = "steps planned" if training else "tiles"
        feedback.setProgressText(f"{obj.get('desc', '')}: {obj.get('total', 0)} {unit}")
        feedback.setProgress(bar.percent(0, obj.get("total", 0)))
    elif event == "progress":
        feedback.setProgress(bar.percent(int(obj.get("done", 0)), int(obj.get("total", 0))))
        extra = {k: v for k, v in obj.items() if k not in ("event", "desc", "done", "total", "elapsed_s")}
        counts = ", ".join(f"{k} {v}" for k, v in extra.items())
        feedback.pushConsoleInfo(f"{obj.get('desc', '')}: {obj.get('done')}/{obj.get('total')} tiles"
                                 f"{', ' + counts if counts else ''} ({obj.get('elapsed_s', 0)} s)")
    elif event == "end":
        feedback.setProgress(bar.percent(int(obj.get("total", 0)), int(obj.get("total", 0))))
        if training:
            feedback.pushInfo(f"training: {obj.get('done')} steps in {eta_text(obj.get('elapsed_s', 0))}")
        else:
            feedback.pushInfo(f"{obj.get('desc', '')}: {obj.get('done')}/{obj.get('total')} tiles in "
                              f"{obj.get('elapsed_s', 0)} s")
    elif event is None or event == "summary":  # the run's JSON summary (with or without the event key)
        obj = {k: v for k, v in obj.items() if k != "event"}
        result.summary = obj
        feedback.pushDebugInfo("geors summary: " + json.dumps(obj))  # the human summary comes on stderr
    else:
        feedback.pushConsoleInfo(text)


def handle_stderr_line(line: str, feedback, result: RunResult) -> None:
    """One stderr line: errors, warnings and log lines, each to the matching feedback channel."""
    text = line.rstrip()
    if not text.strip():
        return
    result.stderr_tail = (result.stderr_tail + [text])[-40:]
    step = None if result.jsonl_progress else _STEP_LINE.search(text)
    if step is not None:  # a trainer without --progress jsonl: the bar from the time spent and the time left
        phase, done, total = step.group(1), int(step.group(2)), int(step.group(3))
        eta = 3600 * int(step.group(4) or 0) + 60 * int(step.group(5) or 0) + float(step.group(6))
        elapsed = max(time.monotonic() - result.started_at, 0.0)
        feedback.setProgress(100.0 * elapsed / (elapsed + eta) if elapsed + eta > 0 else 100.0)
        feedback.setProgressText(f"{phase + ' ' if phase and phase.lower() != 'info' else ''}step {done}/{total}, "
                                 f"{eta_text(eta)} left")
    if text.startswith("Error:"):
        msg = text[len("Error:"):].strip()
        result.errors.append(msg)
        feedback.reportError(msg)
    elif text.startswith(("WARNING", "CRITICAL", "ERROR")) or "Warning:" in text:
        feedback.pushWarning(text)
    else:
        feedback.pushConsoleInfo(text)


def run_geors(env: GeorsEnvironment, args: list[str], feedback, n_scenes: int = 1,
              interrupt_grace_s: float = INTERRUPT_GRACE_S, poll_s: float = 0.1) -> RunResult:
    """Run ``geors ARGS`` in ``env``, feeding its output to ``feedback`` until it ends or is cancelled."""
    cmd = env.command(args)
    feedback.pushCommandInfo(env.display(args))
    kw = _no_window()
    if sys.platform == "win32":
        kw["creationflags"] = kw.get("creationflags", 0) | subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        kw["start_new_session"] = True  # a Ctrl+C in QGIS's terminal does not reach geors twice
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, encoding="utf-8", errors="replace", bufsize=1, env=subprocess_env(), **kw)
    q: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=_pump, args=(proc.stdout, "out", q), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, "err", q), daemon=True)]
    for t in threads:
        t.start()
    result = RunResult(returncode=-1)
    bar = _ProgressMap(n_scenes)
    open_streams = 2
    interrupted_at: float | None = None
    terminated_at: float | None = None
    while open_streams or proc.poll() is None:
        if feedback.isCanceled() and proc.poll() is None:
            now = time.monotonic()
            if interrupted_at is None:
                result.cancelled = True
                interrupted_at = now
                feedback.pushWarning("Cancelling: asking geors to stop after the batch in flight...")
                _interrupt(proc)
            elif terminated_at is None and now - interrupted_at > interrupt_grace_s:
                terminated_at = now
                feedback.pushWarning("geors did not stop in time; terminating it.")
                proc.terminate()
            elif terminated_at is not None and now - terminated_at > TERMINATE_GRACE_S:
                proc.kill()
        try:
            tag, line = q.get(timeout=poll_s)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
            continue
        if tag == "out":
            handle_stdout_line(line, feedback, bar, result)
        else:
            handle_stderr_line(line, feedback, result)
    result.returncode = proc.wait()
    for t in threads:
        t.join(timeout=1)
    for stream in (proc.stdout, proc.stderr):  # unclosed pipes were a ResourceWarning in qgis_process
        if stream is not None:
            stream.close()
    return result


def resume_args(args: list[str]) -> list[str]:
    """``args`` with ``--resume`` added once (the command that continues an interrupted run)."""
    return args if "--resume" in args else [*args, "--resume"]
