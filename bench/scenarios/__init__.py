"""The scenarios: each module has ``run(ctx) -> Outcome``, ``NAME`` and ``SUMMARY``."""

from __future__ import annotations

from types import ModuleType

SCENARIOS = ("floor", "throughput", "latency", "depth", "mixed", "overhead", "enqueue")


def load(name: str) -> ModuleType:
    """Import the module of scenario ``name``."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    import importlib

    return importlib.import_module(f"bench.scenarios.{name}")
