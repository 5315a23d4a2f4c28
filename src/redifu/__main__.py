"""``python -m redifu``: the same as the ``redifu`` command."""

import sys

from redifu.cli import main

sys.exit(main())
