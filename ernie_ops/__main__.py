import sys

from ernie_ops.cli import entry

sys.exit(entry())
