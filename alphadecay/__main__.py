"""``python -m alphadecay TOOL ...``: the same as the ``alphadecay`` command."""
import sys

from .cli import main

sys.exit(main())
