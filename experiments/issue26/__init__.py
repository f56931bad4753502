"""Issue 26's trials through the ``geors`` CLI (run ``python experiments/issue26_trials.py``).

One module per job: ``runs`` (running geors in its own process group, the trial record), ``outputs``
(rows, differences, comparison with an uninterrupted run, GeoPackage validity), ``assets`` (the scenes and
files), ``context`` (what the families share), one module per family (``resume``, ``signals``,
``bad_inputs``, ``kills``), ``report`` and ``cli`` (options, the run, the output).
"""
