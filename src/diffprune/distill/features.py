"""Which features the student matches to the teacher, and forward hooks that collect them.

``stages``: the output of every down, mid and up stage present in both U-Nets (a layer-pruned U-Net keeps its
stages' shapes; a preset without a mid block has none to match). ``units``: every ResNet and attention module
the student still has with parameters (a removed unit's stand-in has none) and the teacher has under the same
name and class. A diffusion transformer has no stages: its sites are its blocks (at either setting), each matched
to the teacher's block it came from (block pruning renumbers them; the student's history says which went), and
the feature of a two-stream block (SD3, Flux) is its image stream. Hooks go on the modules themselves, so
wrapping a model for several processes changes nothing.
"""

from __future__ import annotations

from torch import nn

from diffprune.anatomy import DIT_BLOCK_LISTS, dit_blocks, is_transformer
from diffprune.errors import DiffpruneError


def stage_names(unet) -> list[str]:
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    return names + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]


def unit_names(unet) -> list[str]:
    out = []
    for stage in stage_names(unet):
        block = unet.get_submodule(stage)
        for kind in ("resnets", "attentions"):
            for j, module in enumerate(getattr(block, kind, None) or []):
                if any(True for _ in module.parameters()):
                    out.append(f"{stage}.{kind}.{j}")
    return out


def block_origin(history: list[dict], teacher) -> dict[str, str]:
    """For a block-pruned transformer: each of its block names -> the teacher's block it was, replaying the
    removals the pipeline's history records (names as they were at each step)."""
    lists = {name: list(range(len(getattr(teacher, name)))) for name in DIT_BLOCK_LISTS
             if getattr(teacher, name, None) is not None}
    for step in history:
        if step.get("step") != "prune-layers":
            continue
        for name in step.get("removed", []):
            list_name, _, index = str(name).rpartition(".")
            if list_name in lists and index.isdigit() and int(index) < len(lists[list_name]):
                lists[list_name][int(index)] = None
        lists = {k: [i for i in v if i is not None] for k, v in lists.items()}
    return {f"{k}.{new}": f"{k}.{old}" for k, v in lists.items() for new, old in enumerate(v)}


def matched_sites(student, teacher, kind: str = "stages", history: list[dict] | None = None
                  ) -> list[tuple[str, str]]:
    """``(student module, teacher module)`` pairs hooked in both models, in forward order."""
    if is_transformer(student):
        origin = block_origin(history or [], teacher)
        for list_name in DIT_BLOCK_LISTS:
            have = len(getattr(student, list_name, None) or [])
            follows = sum(1 for name in origin if name.rpartition(".")[0] == list_name)
            if have != follows:
                raise DiffpruneError(
                    f"the student has {have} {list_name} but the teacher and the recorded removals give {follows}: "
                    "prune the pipeline (not a bare transformer) so that its history says which blocks went")
        teacher_modules = dict(teacher.named_modules())
        pairs = [(name, origin[name]) for name, _, _, _ in dit_blocks(student)
                 if name in origin and origin[name] in teacher_modules]
        if not pairs:
            raise DiffpruneError("the student and the teacher share no transformer blocks to match features on")
        return pairs
    names = stage_names(student) if kind == "stages" else unit_names(student)
    teacher_modules = dict(teacher.named_modules())
    student_modules = dict(student.named_modules())
    sites = [(n, n) for n in names if n in teacher_modules
             and type(teacher_modules[n]) is type(student_modules[n])]
    if not sites:
        raise DiffpruneError(f"the student and the teacher share no {kind} to match features on")
    return sites


class FeatureTaps:
    """Forward hooks recording the outputs of ``names`` in ``model`` (of a tuple output, the first element; for a
    transformer's two-stream blocks, which return ``(text, image)``, the image stream)."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.names = list(names)
        self.outputs: dict[str, object] = {}
        self._stream = 1 if is_transformer(model) else 0
        self._handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def record(_module, _args, output):
            self.outputs[name] = output[self._stream] if isinstance(output, tuple) else output
        return record

    def take(self) -> list:
        """The recorded features in ``names`` order; clears them for the next forward."""
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise DiffpruneError(f"no feature was recorded at {missing[0]}")
        out = [self.outputs[n] for n in self.names]
        self.outputs = {}
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
