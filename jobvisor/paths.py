"""Location of jobvisor's files on this machine."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = ".jobvisor"


def home_dir() -> Path:
    """Return ``$JOBVISOR_HOME`` (default ``./.jobvisor``) as an absolute path, creating it."""
    home = Path(os.environ.get("JOBVISOR_HOME") or DEFAULT_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home
