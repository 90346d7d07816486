"""``python -m hub.cli``: the ``hub`` command."""

import os
import sys

from hub.cli import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
