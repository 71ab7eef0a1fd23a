"""`python -m fanout ...` is the `fanout` console script."""

import sys

from fanout.cli import main

sys.exit(main())
