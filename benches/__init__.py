"""Benchmarks and the load generator: offline code that drives the cluster or its parts and writes reports.

Nothing in the serving packages imports this package. Each module is one benchmark with its own
``python -m benches.NAME`` entry point; ``report`` is the shared report helper and ``loadgen`` the open-loop
load generator they use. See docs/ARCHITECTURE.md for the package graph.
"""
