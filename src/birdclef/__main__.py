"""``python -m birdclef`` is the ``birdclef`` command."""

import sys

from birdclef.cli import main

sys.exit(main())
