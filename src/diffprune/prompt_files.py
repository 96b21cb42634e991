"""Prompts from users: one reader for every prompt file (evaluation and calibration) and one check for
prompts given on the command line, so that bad text is one clear error instead of a tokenizer traceback."""

from __future__ import annotations

import os
from pathlib import Path

from diffprune.errors import DiffpruneError


def check_prompt(prompt: str, where: str = "prompt") -> str:
    """Return ``prompt`` if it is text the tokenizers can take (valid Unicode, no NUL)."""
    try:
        prompt.encode("utf-8")  # undecodable bytes from a command line arrive as lone surrogates
    except UnicodeEncodeError:
        raise DiffpruneError(f"{where} is not valid UTF-8 text") from None
    if "\x00" in prompt:
        raise DiffpruneError(f"{where} contains a NUL character")
    return prompt


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """One prompt per line of a UTF-8 text file; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DiffpruneError(f"cannot read prompts file {path}: {e.strerror or e}") from None
    if b"\x00" in data:
        raise DiffpruneError(f"prompts file {path} is not a text file (it contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DiffpruneError(f"prompts file {path} is not UTF-8 text (byte {e.start})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise DiffpruneError(f"prompts file {path} holds no prompts")
    return prompts
