"""Public run-time accelerators benched beside diffprune's own methods, so users can choose between the tools:
``tomesd`` (ToMe for Stable Diffusion) and ``DeepCache`` (feature caching across steps). Both are optional extras
(``pip install diffprune[peers]``), never dependencies; a variant naming one that is not installed gets a clear
error.

A variant spec stacks parts with ``+`` before a method name: ``atedm:ratio=0.63``, ``tomesd:ratio=0.5,
max_downsample=2``, ``deepcache:interval=3``, ``atedm:ratio=0.63+deepcache:interval=3``. diffprune's token specs
go through :func:`diffprune.tokens.apply`; the peers through their own packages, applied after diffprune's patch.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass

from diffprune.errors import DiffpruneError

#: peer -> (module to import, pip name, {option: (keyword, type, default)})
PEERS = {
    "tomesd": ("tomesd", "tomesd", {"ratio": ("ratio", float, 0.5), "max_downsample": ("max_downsample", int, 1),
                                    "sx": ("sx", int, 2), "sy": ("sy", int, 2)}),
    "deepcache": ("DeepCache", "DeepCache", {"interval": ("cache_interval", int, 3),
                                             "branch": ("cache_branch_id", int, 0)}),
}


@dataclass(frozen=True)
class PeerSpec:
    name: str
    options: dict

    def spec(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.options.items()) if self.options else "")


def split_variant(spec: str) -> list[str]:
    """``a:x=1+b:y=2`` -> ``["a:x=1", "b:y=2"]``; a ``+`` not followed by ``name:`` stays (``levels=2+4``)."""
    return [part.strip() for part in re.split(r"\+(?=\s*[a-z]+(?::|$))", spec.strip()) if part.strip()]


def is_peer(part: str) -> bool:
    return part.split(":", 1)[0].strip().lower() in PEERS


def parse_peer(part: str) -> PeerSpec:
    name, _, rest = part.strip().partition(":")
    name = name.strip().lower()
    if name not in PEERS:
        raise DiffpruneError(f"unknown peer '{name}' (peers: {', '.join(PEERS)})")
    known = PEERS[name][2]
    options = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in known:
            raise DiffpruneError(f"bad option '{item}' for {name} (options: {', '.join(known)})")
        try:
            options[key] = known[key][1](value)
        except ValueError:
            raise DiffpruneError(f"bad value in '{item}' of '{part}'") from None
    return PeerSpec(name, options)


def available(name: str) -> bool:
    return importlib.util.find_spec(PEERS[name][0]) is not None


def apply_peer(pipe, peer: PeerSpec) -> Callable[[], None]:
    """Install ``peer`` on ``pipe``; returns the function that removes it."""
    module, pip_name, known = PEERS[peer.name]
    if not available(peer.name):
        raise DiffpruneError(f"{peer.name} is not installed: pip install {pip_name} (or diffprune[peers])")
    kwargs = {keyword: peer.options.get(key, default) for key, (keyword, _, default) in known.items()}
    if peer.name == "tomesd":
        import tomesd

        tomesd.apply_patch(pipe, **kwargs)
        return lambda: tomesd.remove_patch(pipe)
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(**kwargs)
    helper.enable()
    return helper.disable


def apply_variant(pipe, spec: str) -> Callable[[], None]:
    """Install every part of a variant spec (diffprune token pruning first, then the peers); returns the
    function that removes them all, in reverse order."""
    from diffprune import tokens

    parts = split_variant(spec)
    ours = [p for p in parts if not is_peer(p)]
    if len(ours) > 1:
        raise DiffpruneError(f"'{spec}' names two diffprune token-pruning specs; one patch at a time")
    peers = [parse_peer(p) for p in parts if is_peer(p)]
    removers = []
    try:
        if ours:
            tokens.apply(pipe, tokens.parse_spec(ours[0]))
            removers.append(lambda: tokens.remove(pipe))
        for peer in peers:
            removers.append(apply_peer(pipe, peer))
    except Exception:
        for remove in reversed(removers):
            remove()
        raise

    def remove_all() -> None:
        for remove in reversed(removers):
            remove()
    return remove_all
