"""`python -m container` is the `train` console script (for environments without it on PATH)."""

import sys

from container.entry import main

# Guarded: slot processes are started with multiprocessing's spawn, which imports the main module.
if __name__ == "__main__":
    sys.exit(main())
