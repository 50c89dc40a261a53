"""Under torchrun: train, then write this rank's weight digest and decays (rank agreement test)."""
import hashlib
import json
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
from alphadecay.training.flags.args import parse_args  # noqa: E402
from alphadecay.training.loop import train  # noqa: E402

out_dir, argv = sys.argv[1], sys.argv[2:]
result = train(parse_args(argv, world_size=int(os.environ["WORLD_SIZE"])))
digest = hashlib.sha256()
for name, tensor in sorted(result["model"].state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
with open(os.path.join(out_dir, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"weights": digest.hexdigest(), "decays": result["strategy"].decays}, f)
