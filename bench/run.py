#!/usr/bin/env python3
"""Run fastopt's benchmark harness from a source checkout: `python bench/run.py --help`.

The harness itself lives in the package (fastopt.bench), so an installed fastopt has it as
`fastopt bench` too; this script only forwards its arguments.
"""

import sys

from fastopt.bench import main

if __name__ == "__main__":
    sys.exit(main())
