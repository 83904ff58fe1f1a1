"""Benchmarks of jobvisor against Procrastinate, PgQueuer and a bare-SQL floor.

Run ``python -m bench`` (every scenario) or ``python -m bench SCENARIO``; ``--quick`` runs a
small version of each. docs/benchmarks.md describes the method and the latest results.
"""
