"""ViT-tiny training (alphadecay.tasks.vit, Table 5's ViT row): exact resume, decays, DDP, the smoke script."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from alphadecay.tasks import vit
from alphadecay.tasks.vit_args import parse_args

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts" / "table5_vit_tiny"))
import make_images  # noqa: E402

TINY = ["--img_size", "32", "--model_kwargs", '{"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8}',
        "--batch_size", "8", "--warmup_epochs", "1", "--eval_batch_size", "16", "--log_every", "1", "--device", "cpu",
        "--no_wandb", "--unbalancedWD_every", "3"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    make_images.write_folder(str(root), classes=3, train=12, val=4, size=32)
    return root


def _records(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _train(images, save_dir, *extra):
    return vit.train(parse_args(["--data_dir", str(images), "--save_dir", str(save_dir), *TINY, *extra],
                                world_size=1))


def test_resume_is_exact_with_workers_mixup_and_augmentation(images, tmp_path):
    """8 updates in one go == 4, a stop, and 4 more from the checkpoint: weights bit for bit, same losses.
    Two DataLoader workers and RandAugment, random erasing, Mixup/CutMix and drop path are all on."""
    common = ["--strategy", "alphadecay", "--num_training_steps", "8", "--workers", "2", "--save_every", "4"]
    _train(images, tmp_path / "straight", *common)
    # A preempted run: its update-4 checkpoint alone, continued in a fresh process state.
    shutil.copytree(tmp_path / "straight" / "model_4", tmp_path / "split" / "model_4")
    torch.manual_seed(1234)
    _train(images, tmp_path / "split", *common, "--continue_from", "latest")
    a = load_file(str(tmp_path / "straight" / "model_8" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model_8" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loss = {r["step"]: r["loss"] for r in _records(tmp_path / "straight") if r["type"] == "train"}
    resumed = {r["step"]: r["loss"] for r in _records(tmp_path / "split") if r["type"] == "train"}
    assert resumed == {s: v for s, v in loss.items() if s > 4} and len(resumed) == 4


def test_every_method_trains_and_logs_decays(images, tmp_path):
    for strategy in ("none", "uniform", "awd", "adadecay", "alphadecay"):
        result = _train(images, tmp_path / strategy, "--strategy", strategy, "--num_training_steps", "4",
                        "--workers", "0", "--save_every", "0")
        assert 0 <= result["top1"] <= result["top5"] <= 1 and result["eval_images"] == 12
        records = _records(tmp_path / strategy)
        assert records[-1]["type"] == "final" and any(r["type"] == "decay" for r in records)
    decay = [r for r in _records(tmp_path / "alphadecay") if r["type"] == "decay"][-1]
    wd = decay["module_weight_decay"]
    # blocks.0.attn.qkv (first linear) and head (last) keep the base decay; the rest are balanced.
    assert wd["blocks.0.attn.qkv"] == pytest.approx(1e-6) and wd["head"] == pytest.approx(1e-6)
    assert set(decay["type_mean_alpha"]) == {"qkv", "o", "up", "down"}
    assert len({round(v, 12) for n, v in wd.items() if n not in ("blocks.0.attn.qkv", "head")}) > 1


def test_checkpoint_loads_in_timm(images, tmp_path, capsys):
    import timm
    _train(images, tmp_path / "r", "--num_training_steps", "2", "--workers", "0", "--num_classes", "5")
    assert "warning: --num_classes 5 is more than the 3 class folders" in capsys.readouterr().err
    model = timm.create_model(f"local-dir:{tmp_path / 'r' / 'model_2'}", pretrained=True)
    assert model.head.weight.shape == (5, 64)


def test_two_ranks_evaluate_every_image_once(images, tmp_path):
    cmd = ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "alphadecay.tasks.vit", "--data_dir", str(images),
           "--save_dir", str(tmp_path / "ddp"), *TINY, "--num_training_steps", "3", "--workers", "0",
           "--strategy", "alphadecay"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    final = _records(tmp_path / "ddp")[-1]
    assert final["type"] == "final" and final["eval_images"] == 12


def test_bad_vit_input_is_one_line(images, tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "alphadecay.tasks.vit", "--data_dir", str(tmp_path / "nowhere"),
                        "--save_dir", str(tmp_path / "r")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --data_dir")
    for flags, words in (([*TINY, "--batch_size", "64"], "fewer than one batch"),
                         (["--batch_size", "7"], "is odd"), (["--model_kwargs", "{depth"], "not JSON"),
                         (["--model", "vit_nonexistent"], "timm cannot build"),
                         ([*TINY, "--num_classes", "2"], "--num_classes 2 is fewer than the 3 class folders"),
                         ([*TINY, "--img_size", "36"], "--img_size 36 is not a multiple of the patch size 8")):
        code = vit.main(["--data_dir", str(images), "--save_dir", str(tmp_path / "r"), "--workers", "0", "--device",
                         "cpu", "--no_wandb", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], err
    shutil.copytree(images, tmp_path / "fewer_val")
    shutil.rmtree(tmp_path / "fewer_val" / "val" / "class_2")   # val labels would shift against train's
    code = vit.main(["--data_dir", str(tmp_path / "fewer_val"), "--save_dir", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "val/ and train/ differ in class folders (e.g. class_2)" in err[0], err


def test_every_rank_draws_its_own_mixup_and_drop_path():
    """seed + rank, as DeiT: rank 1's Mixup/CutMix parameters and drop-path masks differ from rank 0's, and each
    rank's draws are reproducible (a checkpoint then keeps each rank's generator states)."""
    from timm.data import Mixup
    from timm.layers import drop_path
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=3)

    def draws(rank):
        vit.seed_augmentation(0, rank)
        params = [mixup._params_per_batch() for _ in range(8)]
        mask = drop_path(torch.ones(64, 1), drop_prob=0.5, training=True)
        return [(round(lam, 12), cutmix) for lam, cutmix in params], mask

    (p0, m0), (p1, m1) = draws(0), draws(1)
    assert p0 != p1 and not torch.equal(m0, m1)
    again = draws(0)
    assert again[0] == p0 and torch.equal(again[1], m0)


def test_repeated_augmentation_deals_each_images_copies_to_different_ranks():
    """DeiT's RASampler (timm's RepeatAugSampler): 3 copies per image, each on another rank of 3, each rank as
    many images per epoch as without repeats; the order depends only on (seed, epoch), so resume replays it."""
    from alphadecay.tasks.images import TrainImages
    data = list(range(48))

    def orders(seed, epoch, repeats, world=3):
        return [TrainImages(data, batch_size=4, rank=r, world_size=world, seed=seed, workers=0,
                            repeats=repeats)._order(epoch) for r in range(world)]

    ranks = orders(0, 0, 3)
    assert [len(o) for o in ranks] == [16, 16, 16]
    # position i on every rank is the same image: its 3 copies, one per rank
    assert all(ranks[0][i] == ranks[1][i] == ranks[2][i] for i in range(16)) and len(set(ranks[0])) == 16
    assert orders(0, 0, 3) == ranks and orders(0, 1, 3) != ranks and orders(1, 0, 3) != ranks
    plain = orders(0, 0, 1)   # --no_repeated_aug: the ranks split one permutation
    assert sorted(sum(plain, [])) == data
    keys = TrainImages(data, batch_size=4, rank=1, world_size=3, seed=0, workers=0, repeats=3)._keys(0)
    assert len(keys) == 4 and len({seed for batch in keys for _, seed in batch}) == 16   # each copy augmented anew


def test_smoke_script_runs_every_method_and_prints_the_vit_table(tmp_path):
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "t5")}
    r = subprocess.run(["bash", str(REPO / "scripts" / "table5_vit_tiny" / "run.sh")], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "| method | Top-1 @ wd 0 | Top-1 @ wd 1e-6 |" in r.stdout
    for method in ("WD=0", "Uniform", "AWD", "AdaDecay", "AlphaDecay"):
        assert f"| {method} | " in r.stdout
