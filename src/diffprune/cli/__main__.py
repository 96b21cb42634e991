"""``python -m diffprune.cli``."""

import sys

from diffprune.cli import main

sys.exit(main())
