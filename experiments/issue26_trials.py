#!/usr/bin/env python
"""Issue 26 verification trials, run from outside through the ``geors`` CLI.

Four families, each on small synthetic scenes this script writes (a mosaic of
the NEON OSBS_029 sample when it is present, else a synthetic texture), with
the built-in detector and the weight-free ``--sam box`` engine, ``--tile 256
--overlap 64`` (16 tiles on the 800 px scene), one thread per process:

1. ``resume``: a run is killed (``GEORS_FAULT=batch:3``) or finishes, then
   ``--resume`` with ONE change. Correct = exit 2, a message naming the
   difference, no traceback, the output's rows untouched. Control trials
   (nothing result-affecting changed) must be accepted and end with the rows
   of an uninterrupted run; they are counted separately.
2. ``signals``: SIGINT to the process group (Ctrl-C in a terminal) and SIGTERM
   to the main process, once tiles are in flight, in each execution mode
   (threads default, ``--workers 2``, ``--scheduler local --workers 2``,
   ``--scheduler synchronous``; a ``tcp://`` scheduler is not tried).
   Correct = exit 130 within the time limit, run ``cancelled`` in
   ``geors_runs``, ``PRAGMA integrity_check`` ok and every layer readable
   with pyogrio, no process of the group left, and ``--resume`` ending with
   the rows of an uninterrupted run.
3. ``bad``: bad inputs. Correct = the expected exit code (2 unless stated),
   ONE stderr line naming the file/option, no traceback, no file created
   (a new ``-o`` not there, no other new file in the folder), an existing
   ``-o`` or an input byte-identical (or still valid with its old rows).
4. ``kills``: ``kill -9`` of the main process at a random moment of
   ``geors run``, then ``--resume``. Correct = exit 0 and the rows of an
   uninterrupted run.

Rows are compared as ``issue26/outputs.py`` says. The code is the package ``experiments/issue26/``
(one module per job, one per family); this script is its entry point.

It is a measurement tool, not a test. Usage::

    OMP_NUM_THREADS=1 python experiments/issue26_trials.py [--quick]
        [--families resume,signals,bad,kills] [--json OUT] [--seed N] [--keep]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/ is not a package on the path

from issue26.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
