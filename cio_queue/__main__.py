"""``python -m cio_queue``: the command line.

Stage: outside the pipeline; the command line.
"""

import sys

from ._cli import main

sys.exit(main())
