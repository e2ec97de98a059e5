"""coinfer.bench: what measures coinfer, never what ships.

Workload generators (``coinfer data``), the benchmark harnesses (``coinfer <capability>
bench``), the baselines they compare against, the experiments, the model recipes used only
for measuring, and ``coinfer demo``. It may import every tier; no tier imports it.
"""
