"""torchrun_main.py with fault-injection callbacks: train_with_faults.py FAULT [FAULT ...] -- FLAGS (see faults.py)."""
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from faults import parse  # noqa: E402

from alphadecay.training.loop import main  # noqa: E402

split = sys.argv.index("--")
sys.exit(main(sys.argv[split + 1:], callbacks=parse(sys.argv[1:split])))
