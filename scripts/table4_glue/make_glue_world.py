"""A tiny offline GLUE world for SMOKE=1 runs and tests: generated rows, a word-level tokenizer, a random RoBERTa.

    python scripts/table4_glue/make_glue_world.py OUT     # OUT/model (tokenizer + tiny roberta), OUT/data/<task>/

The rows follow simple rules (a paraphrase is a shuffle of the same words, similarity is the share of common
words, an acceptable sentence keeps its words in order) so that the models can learn something in a few
updates; they use the GLUE column names of nyu-mll/glue and nothing of its text.
"""
from __future__ import annotations

import json
import os
import random
import sys

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "tu") for b in ("b", "d", "g", "m", "n", "r")]
import alphadecay  # noqa: F401,E402 - first: makes a mismatched torchvision importable (alphadecay/_torchvision.py)

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]   # RoBERTa's ids 0..4


def sentence(rng, n=6):
    return rng.sample(WORDS, n)


def rows(task: str, n: int, rng) -> list[dict]:
    out = []
    for _ in range(n):
        a = sentence(rng)
        if task == "mrpc":
            label = rng.random() < 0.5
            b = rng.sample(a, len(a)) if label else sentence(rng)
            out.append({"sentence1": " ".join(a), "sentence2": " ".join(b), "label": int(label)})
        elif task == "stsb":
            k = rng.randint(0, len(a))
            b = a[:k] + [w for w in sentence(rng, 12) if w not in a][:len(a) - k]
            out.append({"sentence1": " ".join(a), "sentence2": " ".join(rng.sample(b, len(b))),
                        "label": round(5.0 * k / len(a), 3)})
        elif task == "cola":
            label = rng.random() < 0.5
            words = sorted(a, key=WORDS.index) if label else a
            out.append({"sentence": " ".join(words), "label": int(label)})
        elif task == "mnli":
            label = rng.randint(0, 2)   # entailment: same words; neutral: half; contradiction: none
            keep = {0: len(a), 1: len(a) // 2, 2: 0}[label]
            b = a[:keep] + [w for w in sentence(rng, 12) if w not in a][:len(a) - keep]
            out.append({"premise": " ".join(a), "hypothesis": " ".join(b), "label": label})
    return out


def write_data(root: str, seed: int = 0) -> None:
    rng = random.Random(seed)
    for task in ("mrpc", "stsb", "cola", "mnli"):
        folder = os.path.join(root, task)
        os.makedirs(folder, exist_ok=True)
        splits = {"train": 256, "validation": 64} if task != "mnli" else \
            {"train": 256, "validation_matched": 48, "validation_mismatched": 48}
        for split, n in splits.items():
            with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows(task, n, rng))


def write_model(folder: str, seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        sep_token="</s>", cls_token="<s>", pad_token="<pad>", mask_token="<mask>",
                                        model_max_length=64)
    # 64 wide: AlphaDecay balances modules with at least --eigs_thresh (50) eigenvalues.
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    RobertaForMaskedLM(config).save_pretrained(folder)   # a pretrained-style checkpoint: heads start fresh
    tokenizer.save_pretrained(folder)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: make_glue_world.py OUT", file=sys.stderr)
        return 2
    write_data(os.path.join(argv[0], "data"))
    write_model(os.path.join(argv[0], "model"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
