"""Writes docs/finetuning_flags.md from the parsers of the GLUE and ViT commands (tests/test_docs.py checks it).

    python scripts/finetuning_flags.py > docs/finetuning_flags.md
"""
import argparse

import alphadecay  # noqa: F401 - first (see alphadecay/_torchvision.py)
from alphadecay.tasks.glue import build_parser as glue_parser
from alphadecay.tasks.vit_args import build_parser as vit_parser


def table(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and a.option_strings[0] != "-h"]
        if not actions:
            continue
        out += [f"**{group.title}**", "", "| flag | default | meaning |", "|---|---|---|"]
        for a in actions:
            if isinstance(a, argparse._StoreTrueAction):
                default = "off (switch)"
            else:
                default = "required" if a.required else ("—" if a.default in (None, "") else str(a.default))
            meaning = (a.help or "").replace("|", "/") + (f" ({'/'.join(map(str, a.choices))})" if a.choices else "")
            out.append(f"| `{a.option_strings[0]}` | {default} | {meaning} |")
        out.append("")
    return out


def main() -> None:
    lines = ["# Every flag of the fine-tuning commands", "",
             "`python -m alphadecay.tasks.glue --help` and `python -m alphadecay.tasks.vit --help` print the same "
             "(this file is written by `scripts/finetuning_flags.py`). The weight-decay group is shared with "
             "`torchrun_main.py`: same names, same meaning.", ""]
    for title, parser in (("python -m alphadecay.tasks.glue (Table 4)", glue_parser()),
                          ("python -m alphadecay.tasks.vit (Table 5)", vit_parser())):
        lines += [f"## {title}", ""] + table(parser)
    print("\n".join(lines).rstrip())


if __name__ == "__main__":
    main()
