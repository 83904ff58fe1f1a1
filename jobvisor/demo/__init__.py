"""Demo application for jobvisor: image filtering, fractal art and story writing jobs.

``app`` registers the five job types (cartoonize, image-generation, scenes, storybook,
auto-story); ``demo_jobs`` builds a reproducible batch of them for ``app.enqueue_many``.
"""

from __future__ import annotations

from jobvisor.demo.app import app
from jobvisor.demo.workload import demo_jobs

__all__ = ["app", "demo_jobs"]
