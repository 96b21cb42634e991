"""The ``diffprune`` command: parse arguments, call the Python API, print results. One module per command
group (``describe``: info and measure; ``generate``; ``evaluate``; ``demo``; ``weights``: prune-weights, sweep and
search; ``layers``: prune-layers; ``compress``; ``distill``; ``bench``), the shared options in ``common`` and ``source``.

A mistake the user can fix is reported as one line on stderr with exit status 2, and nothing is written.
"""

from __future__ import annotations

import errno
import os
import sys

from diffprune.cli import bench, compress, demo, describe, distill, evaluate, generate, layers, weights
from diffprune.cli.common import Parser, UsageError

_DISK_REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
                   errno.ENOLCK}

_COMMANDS = {"info": describe.run_info, "measure": describe.run_measure, "generate": generate.run,
             "eval": evaluate.run, "demo": demo.run, "prune-weights": weights.run, "sweep": weights.run,
             "search": weights.run, "prune-layers": layers.run, "compress": compress.run, "bench": bench.run,
             "distill": distill.run}


def build_parser() -> Parser:
    from diffprune import __version__

    parser = Parser(prog="diffprune", description="Make Stable Diffusion pipelines smaller and faster, "
                                                  "and measure what it cost.")
    parser.add_argument("--version", action="version", version=f"diffprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for group in (describe, generate, evaluate, weights, layers, compress, distill, bench, demo):
        group.add_commands(sub)
    return parser


def _quiet_libraries() -> None:
    # Library warnings (e.g. optional torchvision) and the libraries' own loading bars would bury the CLI's
    # output and its one-line errors; diffprune shows its own progress on a terminal instead.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    from diffprune.errors import DiffpruneError, first_line

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _quiet_libraries()
        if args.command is None:
            parser.print_help()
            return 2
        return _COMMANDS[args.command](args)
    except (DiffpruneError, UsageError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not message.startswith("diffprune"):
            message = f"diffprune: error: {message}"
        print(message, file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `diffprune info X | head`: the reader left, nothing to report
        sys.stderr.close()
        return 1
    except OSError as e:
        if e.errno not in _DISK_REFUSALS:
            raise  # anything else is a bug and keeps its traceback
        # the disk said no while writing (full, read-only, permissions); outputs already reported as written stay
        print(f"diffprune: error: the disk refused a write ({e.strerror or first_line(e)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffprune: interrupted", file=sys.stderr)
        return 130
