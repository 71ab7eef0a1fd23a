"""`python -m container` is the `train` console script (for environments without it on PATH)."""

import sys

from container.entry import main

sys.exit(main())
