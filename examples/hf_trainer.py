"""AlphaDecay with a Hugging Face Trainer, in a few lines (runs on CPU in about a minute).

    python examples/hf_trainer.py                       # tiny LLaMA, built-in text, 40 steps
    python examples/hf_trainer.py --text my.txt --max_steps 200 --output_dir runs/hf_demo

Needs the package installed (``pip install -e .[train]`` or ``pip install -r requirements.txt``) and
``accelerate`` (required by transformers.Trainer). The text is tokenised as raw bytes, so the
example needs no tokenizer download; with a real model use its tokenizer instead.
"""
from __future__ import annotations

import argparse

import torch

import alphadecay  # first: a torchvision built for another torch must not break transformers (see alphadecay/_torchvision.py)
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from alphadecay.integrations import AlphaDecayCallback, create_optimizer

TEXT = """Heavy-tailed self-regularization theory says that the empirical spectral density of a weight
matrix shows how much it has learned: a heavier tail, a smaller power-law exponent alpha, means
stronger feature learning. AlphaDecay gives heavier-tailed modules weaker weight decay and
lighter-tailed modules stronger decay, which balances the spectra across modules. """


class ByteBlocks(torch.utils.data.Dataset):
    """Fixed-length blocks of UTF-8 bytes (token id = byte value)."""

    def __init__(self, text: str, block: int):
        data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
        while data.numel() < 4 * block:  # the built-in text is short: repeat it
            data = torch.cat([data, data])
        n = data.numel() // block
        self.blocks = data[: n * block].view(n, block)

    def __len__(self):
        return self.blocks.shape[0]

    def __getitem__(self, i):
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids.clone()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", help="a UTF-8 text file to train on (default: a built-in paragraph)")
    p.add_argument("--output_dir", default="runs/hf_trainer_example")
    p.add_argument("--max_steps", type=int, default=40)
    p.add_argument("--update_every", type=int, default=10, help="reassign decays every N optimizer updates")
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    args = p.parse_args(argv)

    text = open(args.text, encoding="utf-8").read() if args.text else TEXT
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=344,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128))
    training_args = TrainingArguments(output_dir=args.output_dir, max_steps=args.max_steps,
                                      learning_rate=args.learning_rate, per_device_train_batch_size=8, lr_scheduler_type="cosine", warmup_steps=4,
                                      logging_steps=args.update_every, save_strategy="no", report_to="none",
                                      use_cpu=True, disable_tqdm=True)

    # --- the AlphaDecay part ---------------------------------------------------------------------
    policy = alphadecay.AlphaDecay(model, weight_decay=args.weight_decay, update_every=args.update_every)
    optimizer = create_optimizer(policy, training_args)   # per-module groups + policy.initial_assignment()
    callback = AlphaDecayCallback(policy)                 # reassigns every update_every steps, logs per-type means
    trainer = Trainer(model=model, args=training_args, train_dataset=ByteBlocks(text, 64),
                      optimizers=(optimizer, None), callbacks=[callback])
    # ---------------------------------------------------------------------------------------------
    trainer.train()

    last = policy.last
    print(f"\n{len(callback.assignments)} assignments; at step {last.step}:")
    alpha = last.type_mean_alpha()
    for t in alphadecay.analysis.MODULE_TYPES:
        decays = [wd for n, wd in last.module_weight_decay.items() if alphadecay.module_type(n) == t]
        if t in alpha and decays:
            print(f"  {t:5s} mean alpha {alpha[t]:.3f}   mean decay {sum(decays) / len(decays):.4f}")


if __name__ == "__main__":
    main()
