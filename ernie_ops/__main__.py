import sys

from ernie_ops.cli.main import main

sys.exit(main())
