"""Small pieces shared by the command-line tools."""
import argparse


def parse_bool(text: str) -> bool:
    """The release writes boolean options as values: --remove_last_layer True / False."""
    low = str(text).lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
