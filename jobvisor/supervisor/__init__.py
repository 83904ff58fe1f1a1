"""The parent process: forks workers per job type, restarts them, drains them on stop."""

from jobvisor.supervisor.supervisor import Supervisor

__all__ = ["Supervisor"]
