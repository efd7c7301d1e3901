"""``python -m eventbus`` is the ``eventbus`` command line."""

import sys

from eventbus.cli import main

sys.exit(main())
