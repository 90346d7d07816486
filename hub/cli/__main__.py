"""``python -m hub.cli``: the ``hub`` command."""

import os
import sys

from hub.cli import main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
