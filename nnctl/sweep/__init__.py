"""Hyperparameter sweeps: sweep specs and trials (spec), where trials run (executors), the sweep loop (runner).

Kept import-free: every trial process imports nnctl.sweep.executors and should load no more
than it needs.
"""
