"""MLink measured: the workload, the baselines and the experiments of ``coinfer mlink bench``."""
