"""The `ernie-ops` command line: one module per subcommand, registered in `main.py`.

Subcommand modules import nothing heavy at module level, so `ernie-ops --help` stays fast.
"""

import sys


def entry() -> int:
    """The console script. A Ctrl-C while the subcommands are still being imported ends the command
    like any other Ctrl-C: exit 130, no traceback."""
    try:
        from ernie_ops.cli.main import main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return main()
