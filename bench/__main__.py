"""Entry point of ``python -m bench``; see bench/cli.py."""

from bench.cli import main

# The guard matters: the floor's worker processes are started with multiprocessing's spawn
# method, which imports this module again in each child.
if __name__ == "__main__":
    raise SystemExit(main())
