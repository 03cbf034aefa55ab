"""ernie_ops.serve: deploys checkpoints (serve profiles, the backends in `backends/`, the supervisor,
the embedded Paddle backend for CPU) and talks to the endpoints (smoke, benchmark, evaluation).
Installed as `ernie_ops.serve`. The library entry point, shared by the CLI and the pipeline:
`start(profile, detach=...)`, `servers()`, `stop(port=...)` (`lifecycle.py`)."""

from ernie_ops.serve.lifecycle import Stopped, command, load, select, servers, start, stop

__all__ = ["Stopped", "command", "load", "select", "servers", "start", "stop"]
