"""ernie_ops.train: runs ERNIEKit jobs (command building, launch on CPU / GPUs / nodes, log following,
watchdog, resume, LoRA export, checkpoint verification). Installed as `ernie_ops.train`."""
