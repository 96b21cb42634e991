"""diffprune's own storage formats, registered by the families that need them, so that loading and saving
(``io``, ``saving``) never import a compression family.

Two kinds exist. A **structure** format builds a component whose structure its configuration cannot describe
(a layer-pruned U-Net). A **state** format stores a component's weights other than as dense safetensors (the
sparse bitmask format). Both can apply to one folder: the state format decodes the weights, the structure
format builds the module that takes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class StructureFormat:
    name: str                                        # e.g. "diffprune-layers"
    applies: Callable[[nn.Module], bool]             # the module has a structure its config cannot describe
    save: Callable[[nn.Module, Path], str]           # writes the folder; returns the format it used
    detect: Callable[[Path], bool]                   # the folder is in this format
    load: Callable[[Path, object, dict | None], nn.Module]  # (folder, dtype, decoded weights or None)


@dataclass(frozen=True)
class StateFormat:
    name: str                                        # e.g. "diffprune-bitmask"
    option: str                                      # what ``save(..., weights_format=...)`` calls it
    components: tuple[str, ...]                      # the pipeline components it stores
    detect: Callable[[Path], bool]
    read: Callable[[Path], dict]                     # the folder's weights, decoded
    load: Callable[[Path, object], nn.Module]        # (folder, dtype) for a module of stock structure
    save: Callable[[nn.Module, Path, str, list], None]  # (module, folder, component name, history)


_STRUCTURES: dict[str, StructureFormat] = {}
_STATES: dict[str, StateFormat] = {}


def register_structure_format(fmt: StructureFormat) -> None:
    _STRUCTURES[fmt.name] = fmt


def register_state_format(fmt: StateFormat) -> None:
    _STATES[fmt.option] = fmt


def structure_formats() -> list[StructureFormat]:
    return list(_STRUCTURES.values())


def state_format(option: str) -> StateFormat | None:
    """The state format ``save(..., weights_format=option)`` writes, or ``None``."""
    return _STATES.get(option)


def weights_format_options() -> list[str]:
    return ["dense", *_STATES]


def load_stored_component(folder: Path, dtype) -> nn.Module | None:
    """A component saved in one of the registered formats, or ``None`` for a folder in none of them."""
    state = next((f for f in _STATES.values() if f.detect(folder)), None)
    for fmt in _STRUCTURES.values():
        if fmt.detect(folder):
            return fmt.load(folder, dtype, state.read(folder) if state is not None else None)
    return state.load(folder, dtype) if state is not None else None
