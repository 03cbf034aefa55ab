#!/usr/bin/env python
"""Write the recipe library (`recipes/`) from its single definition in ernie_ops/recipe/library.py.

.venv/bin/python scripts/gen_recipes.py          # rewrite every shipped recipe
.venv/bin/python scripts/gen_recipes.py --check  # exit 1 if a file differs (what the tests assert)
"""

from __future__ import annotations

import argparse
import sys

from ernie_ops.recipe.library import LIBRARY
from ernie_ops.recipe.render import relative, render


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for entry in LIBRARY:
        text = render(entry)
        if args.check:
            if not entry.path.is_file() or entry.path.read_text() != text:
                stale.append(relative(entry))
            continue
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        entry.path.write_text(text)
    if stale:
        print("out of date (run scripts/gen_recipes.py):\n  " + "\n  ".join(stale))
        return 1
    print(f"{len(LIBRARY)} recipes {'up to date' if args.check else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
