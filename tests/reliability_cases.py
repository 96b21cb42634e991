"""Bad inputs a user can give the ``diffprune`` command, run for real: what the user sees, the exit status and what
is on disk afterwards. ``tests/test_reliability.py`` runs every case and checks that ``docs/reliability.md`` holds
exactly the table they produce; ``python tests/reliability_cases.py`` rewrites that table after a change.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
BEGIN, END = "<!-- cases: begin (generated) -->", "<!-- cases: end -->"


@dataclass(frozen=True)
class Case:
    name: str
    bad_input: str                      # what the user did, in words
    argv: tuple[str, ...]               # run in a fresh empty folder (relative paths land there)
    expect: str                         # part of the one line the user must see
    setup: Callable[[Path], None] | None = None
    shown: str | None = None            # the command as the table shows it (when argv holds unprintable text)


# ---- setups: each builds what the case needs inside the case's own folder --------------------------------------

def _testbed_copy(tmp: Path, name: str) -> Path:
    from diffprune.testbed.assets import testbed_folder

    return Path(shutil.copytree(testbed_folder(), tmp / name))


def _user_folder(tmp: Path) -> None:
    (_testbed_copy(tmp, "U") / "notes.txt").write_text("my notes\n")


def evil_library_folder(tmp: Path) -> None:
    folder = _testbed_copy(tmp, "E")
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["evil_unet", "EvilUNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "unet" / "evil_unet.py").write_text("from pathlib import Path\nPath('EVIL_RAN').touch()\n"
                                                  "from diffusers import UNet2DConditionModel as EvilUNet\n")


def _code_named_like_diffusers(tmp: Path) -> None:
    folder = _testbed_copy(tmp, "E")  # model_index.json untouched: the file alone would be imported
    (folder / "unet" / "diffusers.py").write_text("from pathlib import Path\nPath('EVIL_RAN').touch()\n")


def _nested_pipeline(tmp: Path) -> None:
    folder = _testbed_copy(tmp, "E")
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "DiffusionPipeline"]
    (folder / "model_index.json").write_text(json.dumps(index))


def _unknown_class(tmp: Path) -> None:
    folder = _testbed_copy(tmp, "E")
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "NoSuchModel"]
    (folder / "model_index.json").write_text(json.dumps(index))


def _saved(tmp: Path, name: str, *, edit=None, weights_format: str = "dense") -> Path:
    import diffprune

    pipe = diffprune.load("shapes")
    if edit is not None:
        edit(pipe)
    return diffprune.save(pipe, tmp / name, weights_format=weights_format)


def _saved_folder(tmp: Path) -> None:
    _saved(tmp, "F")


def _flip_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10  # inside the tensor data, far past the header
    file.write_bytes(bytes(data))


def _layers_truncated(tmp: Path) -> None:
    from diffprune.layers import remove_units

    folder = _saved(tmp, "L", edit=lambda pipe: remove_units(pipe.unet, ["up_blocks.1.resnets.1"]))
    file = next((folder / "unet").glob("*.safetensors"))
    file.write_bytes(file.read_bytes()[:4096])


def _nan_weights(tmp: Path) -> None:
    import torch

    def poison(pipe):
        with torch.no_grad():
            pipe.unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    _saved(tmp, "N", edit=poison)


def _flipped_dense(tmp: Path) -> None:
    _flip_byte(_saved(tmp, "F") / "unet" / "diffusion_pytorch_model.safetensors")


def _flipped_bitmask(tmp: Path) -> None:
    _flip_byte(_saved(tmp, "F", weights_format="bitmask") / "unet" / "diffprune_sparse.safetensors")


def _unlisted_weights(tmp: Path) -> None:
    (_saved(tmp, "F") / "unet" / "zz_extra.safetensors").write_bytes(b"extra weights")


def _junk_safetensors(tmp: Path) -> None:
    (_testbed_copy(tmp, "J") / "unet" / "notes.safetensors").write_bytes(b"not safetensors at all")


def _report_with_added_file(tmp: Path) -> None:
    from diffprune.report import Report

    report = Report(tmp / "R", title="earlier")
    report.text("an earlier report")
    report.write()
    (tmp / "R" / "notes.txt").write_text("mine\n")


def _weights_and_refs(tmp: Path) -> None:
    (tmp / "w.pth").write_bytes(b"weights\n")
    (tmp / "refs").mkdir()


def _file(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_bytes(data)


def _malicious_pickle(tmp: Path) -> None:
    import torch

    class Payload:  # unpickling it would create the folder PWNED
        def __reduce__(self):
            return (os.mkdir, ("PWNED",))
    torch.save({"weights": Payload()}, tmp / "inception.pth")


def _report_with_user_files(tmp: Path) -> None:
    (tmp / "R").mkdir()
    (tmp / "R" / "notes.txt").write_text("mine\n")


# ---- the cases -------------------------------------------------------------------------------------------------

PW = ("prune-weights", "shapes", "--out", "P")
GEN = ("generate", "shapes", "--prompt", "a big red circle", "--out", "o.png")

CASES: list[Case] = [
    # data loss and code execution
    Case("overwrite-user-folder", "`--overwrite` onto a diffusers folder diffprune did not write (plus the user's "
         "notes.txt)", ("prune-weights", "shapes", "--out", "U", "--unet-sparsity", "0.5", "--overwrite"),
         "refusing to replace", _user_folder),
    Case("overwrite-user-report", "`--report` onto a folder with the user's files, with `--overwrite`",
         ("eval", "shapes", "--prompts", "2", "--report", "R", "--overwrite"), "refusing to replace",
         _report_with_user_files),
    Case("model-index-code", "model_index.json names a library that is a `.py` file in the folder",
         ("info", "E"), "names the library 'evil_unet'", evil_library_folder),
    Case("model-index-unknown-class", "model_index.json names a class diffusers does not have",
         ("info", "E"), "which this diffusers does not have", _unknown_class),
    Case("code-named-diffusers", "a component folder holding `diffusers.py` (older diffusers import it)",
         ("info", "E"), "contains code (unet/diffusers.py)", _code_named_like_diffusers),
    Case("model-index-pipeline", "model_index.json makes a component a nested pipeline", ("info", "E"),
         "is not a model, scheduler, tokenizer or image processor", _nested_pipeline),
    Case("fid-pickle", "an Inception weights file holding pickled code",
         ("eval", "shapes", "--suite", "fid", "--inception-weights", "inception.pth", "--reference-images", "."),
         "is not a plain weights file", _malicious_pickle),
    Case("out-equals-json", "`--out X --json X`", (*PW, "--unet-sparsity", "0.5", "--json", "P"),
         "--out and --json must name separate paths"),
    Case("json-inside-out", "`--json` inside the `--out` folder", (*PW, "--unet-sparsity", "0.5", "--json", "P/r.json"),
         "--out and --json must name separate paths"),
    Case("report-equals-json", "`eval --report X --json X`", ("eval", "shapes", "--report", "X", "--json", "X"),
         "--report and --json must name separate paths"),
    Case("overwrite-added-file", "`--overwrite` onto a diffprune report to which the user added a file",
         ("eval", "shapes", "--prompts", "2", "--report", "R", "--overwrite"), "holds files diffprune did not write",
         _report_with_added_file),
    Case("json-over-input", "`--json` naming an input file (here the Inception weights), with `--overwrite`",
         ("eval", "shapes", "--suite", "fid", "--inception-weights", "w.pth", "--reference-images", "refs", "--json",
          "w.pth", "--overwrite"), "is or lies inside the input w.pth", _weights_and_refs),
    Case("out-inside-input-file", "`--out` inside the folder of a source given as its model_index.json",
         ("prune-weights", "U/model_index.json", "--out", "U/pruned", "--unet-sparsity", "0.5"),
         "overlaps the input", _user_folder),
    Case("json-inside-component-source", "`--json` inside the pipeline folder of a component folder given as the "
         "source", ("measure", "F/unet", "--json", "F/unet-measure.json"), "inside the input F", _saved_folder),
    Case("out-inside-input", "`--out` inside the input model folder",
         ("prune-weights", "U", "--out", "U/pruned", "--unet-sparsity", "0.5"), "overlaps the input",
         _user_folder),
    # unreadable or damaged inputs
    Case("layers-truncated-verified", "truncated weights of a layer-pruned (`diffprune-layers`) folder",
         ("info", "L"), "SHA-256 differs", _layers_truncated),
    Case("layers-truncated-unverified", "the same, with `--no-verify`", ("info", "L", "--no-verify"),
         "is damaged (not a readable safetensors file", _layers_truncated),
    Case("bit-flip-dense", "one flipped bit in the U-Net of a saved folder (dense)", ("info", "F"),
         "SHA-256 differs", _flipped_dense),
    Case("bit-flip-bitmask", "one flipped bit in the U-Net of a saved folder (bitmask)", ("info", "F"),
         "SHA-256 differs", _flipped_bitmask),
    Case("unlisted-weights", "a weights file added to a saved folder after saving", ("info", "F"),
         "was not saved with this folder", _unlisted_weights),
    Case("junk-safetensors", "an unreadable `.safetensors` file in a plain diffusers folder", ("info", "J"),
         "is not a readable safetensors file", _junk_safetensors),
    Case("nan-generate", "a U-Net weight that is NaN, `generate`", ("generate", "N", "--prompt", "a red circle",
         "--out", "o.png"), "holds NaN or infinite values", _nan_weights),
    Case("nan-prune", "a U-Net weight that is NaN, `prune-weights`",
         ("prune-weights", "N", "--out", "P", "--unet-sparsity", "0.5"), "holds NaN or infinite values",
         _nan_weights),
    Case("no-such-source", "a source that does not exist", ("info", "does/not/exist"), "no such file or folder"),
    Case("unknown-arch", "an unknown random architecture", ("info", "random:sd9"), "unknown architecture 'sd9'"),
    Case("folder-without-config", "a folder that is no model", ("info", "."), "not a diffusers model folder"),
    # outputs
    Case("out-parent-read-only", "`--out` in a folder nobody may write (`/proc`)",
         (*PW[:3], "/proc/diffprune-out", "--unet-sparsity", "0.5"), "no file can be created in /proc"),
    Case("out-parent-is-file", "`--out` below a file", (*PW[:3], "notes.txt/out", "--unet-sparsity", "0.5"),
         "is a file, not a folder", _file("notes.txt", b"x\n")),
    Case("json-read-only", "`--json` in a folder nobody may write", ("measure", "random:tiny-sd", "--json",
         "/proc/m.json"), "no file can be created in /proc"),
    Case("json-exists", "`--json` naming an existing file, without `--overwrite`",
         ("measure", "random:tiny-sd", "--json", "m.json"), "exists (pass --overwrite", _file("m.json", b"{}\n")),
    Case("png-exists", "`generate --out` naming an existing image, without `--overwrite`", GEN,
         "exists (pass --overwrite", _file("o.png", b"not really a png\n")),
    Case("png-suffix", "`generate --out` not a .png", (*GEN[:-1], "o.jpg"), "--out must name a .png file"),
    Case("report-not-empty", "`--report` onto a non-empty folder, without `--overwrite`",
         ("eval", "shapes", "--report", "R"), "exists and is not empty", _report_with_user_files),
    # text
    Case("prompts-file-binary", "`--prompts-file` with binary content",
         ("eval", "shapes", "--suite", "fidelity", "--prompts-file", "p.txt"), "is not a text file",
         _file("p.txt", b"\x89PNG\r\n\x1a\n\x00\x00")),
    Case("prompts-file-latin1", "`--prompts-file` in Latin-1, not UTF-8",
         ("eval", "shapes", "--suite", "fidelity", "--prompts-file", "p.txt"), "is not UTF-8 text",
         _file("p.txt", "a caf\u00e9 on a hill\n".encode("latin-1"))),
    Case("calib-prompts-comments", "`--calib-prompts` holding only `#` comments",
         (*PW, "--unet-sparsity", "0.5", "--method", "wanda", "--calib-prompts", "p.txt"), "holds no prompts",
         _file("p.txt", b"# first\n# second\n")),
    Case("prompt-not-utf8", "`generate --prompt` with bytes that are not UTF-8",
         ("generate", "shapes", "--prompt", "caf\udce9", "--out", "o.png"), "is not valid UTF-8 text",
         shown="diffprune generate shapes --prompt $'caf\\xe9' --out o.png"),
    # options
    Case("tome-stride-0", "`--tokens tome:stride=0`", (*GEN, "--tokens", "tome:stride=0"),
         "stride must be at least 1"),
    Case("tokens-no-site", "`--tokens atedm:levels=8` on a U-Net whose attention never runs at level 8",
         (*GEN, "--tokens", "atedm:levels=8"), "selects no attention block"),
    Case("tokens-bad-ratio", "`--tokens atedm:ratio=1.5`", ("measure", "shapes", "--tokens", "atedm:ratio=1.5"),
         "ratio must be in [0, 1)"),
    Case("sparsity-1", "`--unet-sparsity 1.0`", (*PW, "--unet-sparsity", "1.0"), "--unet-sparsity must be in [0, 1)"),
    Case("unknown-method", "an unknown pruning method", (*PW, "--unet-sparsity", "0.5", "--method", "obs"),
         "unknown pruning method 'obs'"),
    Case("no-sparsity", "`prune-weights` without any sparsity", PW, "give at least one of"),
    Case("layers-ratio-and-preset", "`prune-layers` with both `--ratio` and `--preset`",
         ("prune-layers", "shapes", "--out", "P", "--ratio", "0.3", "--preset", "bk-base"),
         "give exactly one of --ratio and --preset"),
    Case("layers-ratio-too-high", "`prune-layers --ratio 0.97`", ("prune-layers", "shapes", "--out", "P", "--ratio",
         "0.97", "--calib-num-prompts", "2", "--calib-steps", "2"), "is not below the most that can be removed"),
    Case("recipe-unknown-key", "a recipe file with a misspelt key", ("compress", "shapes", "--out", "P", "--recipe",
         "r.yaml"), "unknown key 'critrion'", _file("r.yaml", b"layers: {critrion: magnitude, ratio: 0.2}\n")),
    Case("bench-same-recipe-twice", "`bench` given the same recipe twice",
         ("bench", "shapes", "--recipes", "atedm", "atedm", "--out", "B"), "is used twice"),
    Case("bench-claims-with-source", "`bench --claims` with a SOURCE", ("bench", "shapes", "--claims", "--out", "B"),
         "--claims takes no SOURCE"),
    Case("distill-no-data", "`distill --data` naming a folder that does not exist",
         ("distill", "shapes", "--teacher", "shapes", "--data", "nope/", "--out", "D"), "no data folder at nope/"),
    Case("distill-foreign-work", "`distill --work` naming a folder of the user's",
         ("distill", "shapes", "--teacher", "shapes", "--data", "shapes", "--out", "D", "--work", "U",
          "--overwrite"), "is not a diffprune distillation run folder", _user_folder),
    Case("distill-bad-feature-kd", "`distill --lambda-task 0 --lambda-out 0 --feature-kd none`",
         ("distill", "shapes", "--teacher", "shapes", "--data", "shapes", "--out", "D", "--lambda-task", "0",
          "--lambda-out", "0", "--feature-kd", "none"), "every loss weight is zero"),
    Case("fid-no-weights", "`eval --suite fid` without Inception weights", ("eval", "shapes", "--suite", "fid"),
         "FID needs local Inception weights"),
    Case("bad-device", "an unknown `--device`", (*GEN, "--device", "gpu0"), "unknown device 'gpu0'"),
    Case("bad-resolution", "`measure --resolution 0`", ("measure", "shapes", "--resolution", "0"),
         "must be at least 1"),
    Case("unknown-command", "an unknown command", ("frobnicate",), "invalid choice: 'frobnicate'"),
]


# ---- running a case --------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    code: int
    stderr: str
    changed: list[str]  # paths added, removed or modified in the case's folder


def snapshot(folder: Path) -> dict[str, tuple]:
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and not path.is_symlink():
                state[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
            else:
                state[rel] = ("dir", path.stat().st_mode)
    return state


@contextlib.contextmanager
def _inside(folder: Path):
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run_case(case: Case, folder: Path) -> Outcome:
    from diffprune.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    with _inside(folder):
        if case.setup is not None:
            case.setup(folder)
        before = snapshot(folder)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(list(case.argv))
        after = snapshot(folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    text = err.getvalue().replace(str(folder.resolve()) + "/", "").replace(str(folder.resolve()), ".")
    return Outcome(code, text, changed)


# ---- the table -------------------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def render(outcomes: dict[str, Outcome]) -> str:
    rows = ["| # | bad input | command | what the user sees (stderr) | exit | on disk afterwards |",
            "|---|---|---|---|---|---|"]
    for i, case in enumerate(CASES, 1):
        o = outcomes[case.name]
        command = case.shown or "diffprune " + " ".join(a if " " not in a else f"'{a}'" for a in case.argv)
        disk = "unchanged" if not o.changed else "changed: " + ", ".join(o.changed)
        rows.append(f"| {i} | {_cell(case.bad_input)} | `{_cell(command)}` | {_cell(o.stderr)} | {o.code} | {disk} |")
    return "\n".join(rows)


def doc_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip()


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        outcomes = {case.name: run_case(case, Path(tmp) / case.name) for case in CASES}
    text = DOC.read_text(encoding="utf-8")
    head, tail = text[:text.index(BEGIN) + len(BEGIN)], text[text.index(END):]
    DOC.write_text(f"{head}\n{render(outcomes)}\n{tail}", encoding="utf-8")
    print(f"wrote {len(CASES)} cases to {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
