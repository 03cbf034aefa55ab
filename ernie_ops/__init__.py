"""ernie-ops: fine-tune ERNIE 4.5 with ERNIEKit, serve it with FastDeploy, and validate it.

Nothing heavy is imported here: `import ernie_ops` and `ernie-ops --help` stay fast.
"""

__version__ = "0.1.0"
