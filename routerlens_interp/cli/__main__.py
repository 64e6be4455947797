"""``python -m routerlens_interp.cli``: the same as the ``routerlens`` command."""
import sys

from .commands import main

sys.exit(main())
