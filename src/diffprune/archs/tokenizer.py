"""An offline CLIP-style BPE tokenizer for pipelines whose real vocabulary is not on disk.

Random-weight pipelines (``random:<arch>``) and the shapes testbed need a tokenizer that works with no
download. This builds a real ``CLIPTokenizer`` (byte-level BPE, CLIP's special tokens and padding rules)
whose merges turn a given word list into single tokens; every other string still encodes byte by byte.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes, in byte order.

    Printable Latin-1 bytes stand for themselves; the others are shifted past U+0100 so that no byte maps
    to whitespace or a control character (the convention CLIP's vocabulary files follow).
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    shifted = 0
    alphabet = []
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


class _Merges:
    """BPE merges that make each added word (a list of base symbols) encode as one token.

    BPE merges the lowest-ranked adjacent pair first, so a chain of left-to-right merges can be cut short by
    another word's merge ("r i" from "right" splits "triangle"). A merge for every pair of adjacent substrings
    makes every partial split of the word mergeable again: each word always ends as one token, whatever else is
    in the vocabulary. Shorter results first. New tokens are appended to ``tokens``.
    """

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.known = set(tokens)
        self.merges: list[str] = []
        self.seen: set[str] = set()

    def add(self, pieces: list[str]) -> None:
        n = len(pieces)
        for length in range(2, n + 1):
            for start in range(0, n - length + 1):
                for cut in range(start + 1, start + length):
                    left, right = "".join(pieces[start:cut]), "".join(pieces[cut:start + length])
                    merge = f"{left} {right}"
                    if merge in self.seen:
                        continue
                    self.seen.add(merge)
                    self.merges.append(merge)
                    if left + right not in self.known:
                        self.tokens.append(left + right)
                        self.known.add(left + right)


def build_vocab(words: Iterable[str] = ()) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merge list in CLIP's layout: bytes, bytes+``</w>``, merged tokens, then BOS/EOS.

    Each word (lower-cased, made of bytes the alphabet covers) gets merges so that it encodes as one token,
    whatever other words share its letters. The special tokens come last, so EOS has the largest id, as in CLIP (some
    text-encoder configs pool the hidden state at ``argmax(input_ids)``).
    """
    alphabet = _byte_alphabet()
    byte_to_char = dict(enumerate(alphabet))
    tokens = list(alphabet) + [c + END_OF_WORD for c in alphabet]
    merges = _Merges(tokens)
    for word in words:
        chars = [byte_to_char[b] for b in word.lower().strip().encode("utf-8")]
        if len(chars) < 2 or any(c.isspace() for c in word.strip()):
            continue
        merges.add(chars[:-1] + [chars[-1] + END_OF_WORD])
    merges = merges.merges
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_tokenizer(words: Iterable[str] = (), model_max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` built from :func:`build_vocab`.

    The vocabulary goes through the standard ``vocab.json`` + ``merges.txt`` files, the one format every
    transformers version reads, so the tokenizer saves and reloads like any CLIP tokenizer.
    """
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab(words)
    with tempfile.TemporaryDirectory(prefix="diffprune-tok-") as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("".join(f"{m}\n" for m in ["#version: 0.2", *merges]), encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(
            json.dumps({"model_max_length": model_max_length, "bos_token": BOS, "eos_token": EOS,
                        "unk_token": EOS, "pad_token": EOS}),
            encoding="utf-8",
        )
        return CLIPTokenizer.from_pretrained(folder)


SPACE = "\u2581"  # SentencePiece's word-boundary marker
_PRINTABLE = [chr(c) for c in range(ord("!"), ord("~") + 1)]


def _words(words: Iterable[str]) -> list[str]:
    out = []
    for word in words:
        word = word.lower().strip()
        if word and not any(c.isspace() for c in word) and word not in out:
            out.append(word)
    return out


def build_t5_tokenizer(words: Iterable[str] = (), model_max_length: int = 512):
    """A ``transformers`` T5 tokenizer (SentencePiece-style unigram model, T5's special tokens and ids: ``<pad>`` 0,
    ``</s>`` 1, ``<unk>`` 2, 100 sentinel tokens) whose vocabulary holds ASCII characters and each of ``words`` as
    one piece. Built in memory; it saves and reloads like any T5 tokenizer."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (SPACE, -2.0)]
    vocab += [(c, -8.0) for c in _PRINTABLE] + [(SPACE + c, -8.5) for c in _PRINTABLE]
    vocab += [(SPACE + w, -1.0) for w in _words(words)]
    return T5TokenizerFast(vocab=vocab, extra_ids=100, model_max_length=model_max_length)


def build_gemma_tokenizer(words: Iterable[str] = (), model_max_length: int = 8192):
    """A ``transformers`` Gemma tokenizer (byte-fallback BPE, Gemma's special tokens and ids: ``<pad>`` 0, ``<eos>``
    1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, then the 256 byte tokens) with merges that make each of ``words``, with
    and without a leading space, one token. Any other text still encodes, byte by byte where needed."""
    from transformers import GemmaTokenizerFast

    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [SPACE] + _PRINTABLE
    merges = _Merges(tokens)
    for word in _words(words):
        merges.add([SPACE, *word])
        merges.add(list(word))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = [tuple(m.split(" ")) for m in merges.merges]
    return GemmaTokenizerFast(vocab=vocab, merges=pairs, model_max_length=model_max_length, add_bos_token=True)


def build_any_tokenizer(kind: str, words: Iterable[str] = ()):
    """The offline tokenizer of ``kind`` (``clip``, ``t5`` or ``gemma``)."""
    builders = {"clip": build_tokenizer, "t5": build_t5_tokenizer, "gemma": build_gemma_tokenizer}
    if kind not in builders:
        raise ValueError(f"unknown tokenizer kind '{kind}' (choose from {', '.join(builders)})")
    return builders[kind](words)
