"""``python -m alphadecay.training ...`` / ``torchrun ... -m alphadecay.training ...``: the same as torchrun_main.py."""
import sys

from .loop import main

sys.exit(main())
