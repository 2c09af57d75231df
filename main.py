"""interp entry point: ``python main.py --stdio`` or ``python main.py --port 8000``, and
``python main.py dashboard`` to follow a running server in a terminal.

Equivalent to the ``interp`` console script; see `interp.cli`.
"""

import sys

from interp.cli import main

if __name__ == "__main__":
    sys.exit(main())
