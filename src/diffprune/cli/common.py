"""What every ``diffprune`` command shares: the parser that turns usage errors into one line, argument types,
and the sampler and token-pruning options."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """A command-line mistake: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line and our exit code
        raise UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_generation_options(p: argparse.ArgumentParser) -> None:
    """Sampler settings and the local metric weights, shared by ``eval``, ``sweep`` and ``search``."""
    p.add_argument("--steps", type=positive_int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=25, help="images per pipeline call (default 25)")
    p.add_argument("--clip-model", metavar="DIR", help="clip: local transformers CLIP folder")
    p.add_argument("--pickscore-model", metavar="DIR", help="pickscore: local PickScore (CLIP) folder")
    p.add_argument("--pickscore-processor", metavar="DIR", help="pickscore: processor folder if not with the model")
    p.add_argument("--inception-weights", metavar="FILE", help="fid: local FID Inception weights (.pth)")
    p.add_argument("--reference-images", metavar="DIR", help="fid: folder of real images")


def add_tokens(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", metavar="SPEC",
                   help="prune tokens at run time, e.g. atedm:ratio=0.63,dsap=on | tome:ratio=0.5 | random:ratio=0.63 "
                        "(see docs/tokens.md)")


def parse_tokens_option(args):
    """The parsed --tokens spec (checked before any loading), or None."""
    if not getattr(args, "tokens", None):
        return None
    from diffprune.tokens import parse_spec

    return parse_spec(args.tokens)
