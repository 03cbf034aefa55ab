"""ernie_ops.serve: deploys checkpoints (serve profiles, the FastDeploy command builder and supervisor,
the embedded Paddle backend for CPU) and talks to the endpoints (smoke, benchmark, evaluation).
Installed as `ernie_ops.serve`."""
