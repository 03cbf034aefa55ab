"""The `ernie-ops` command line: one module per subcommand, registered in `main.py`.

Subcommand modules import nothing heavy at module level, so `ernie-ops --help` stays fast.
"""
