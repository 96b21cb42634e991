"""A compression recipe: the steps of every family in one frozen, validated object, read from and written to
YAML or JSON.

```yaml
name: stack
calibration: {num_prompts: 16, steps: 10, seed: 0}
layers: {criterion: output-loss, ratio: 0.2}          # or {preset: bk-small}
weights:
  text_encoder: {method: magnitude, sparsity: 0.4}
  unet: {method: wanda, sparsity: 0.3}
tokens: atedm:ratio=0.5                                # a token pruning spec string
```

Every key is checked: an unknown key, or an option the chosen method does not use, is an error (never
silently dropped), and the whole recipe is validated before any weight changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from diffprune.calibration import DEFAULT_BATCH_SIZE, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_PROMPTS, DEFAULT_STEPS
from diffprune.errors import DiffpruneError
from diffprune.layers import BUDGETS, CRITERIA, GRANULARITIES, PRESETS, SOLVERS
from diffprune.tokens import parse_spec
from diffprune.weights import make_config
from diffprune.weights.targets import DENOISER, PRUNABLE_COMPONENTS  # DENOISER: unet or transformer, whichever


def _check_keys(cls, data, where: str) -> None:
    """Refuse ``data`` unless it is a mapping whose keys are all fields of the dataclass ``cls``."""
    if not isinstance(data, dict):
        raise DiffpruneError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in known]
    if unknown:
        raise DiffpruneError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(known)})")


def _strict(cls, data, where: str):
    """``cls(**data)`` after :func:`_check_keys`."""
    _check_keys(cls, data, where)
    return cls(**data)


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration shared by every step that needs it: ``num_prompts`` prompts (the user's list repeated from
    the start, or the testbed's training captions), sampled with ``steps`` steps from ``seed``."""

    prompts: tuple[str, ...] | None = None
    num_prompts: int = DEFAULT_NUM_PROMPTS
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    timesteps: int = 5  # layer pruning: sampling steps recorded per prompt (evenly spread)

    def __post_init__(self) -> None:
        if self.prompts is not None:
            object.__setattr__(self, "prompts", tuple(self.prompts))
        if min(self.num_prompts, self.steps, self.batch_size, self.timesteps) < 1:
            raise DiffpruneError("calibration: num_prompts, steps, batch_size and timesteps must be at least 1")

    def weights_config(self):
        from diffprune.weights import CalibrationConfig

        config = CalibrationConfig(prompts=None if self.prompts is None else list(self.prompts),
                                   num_prompts=self.num_prompts, steps=self.steps,
                                   guidance_scale=self.guidance_scale, batch_size=self.batch_size, seed=self.seed)
        config.validate()
        return config

    def layers_config(self):
        from diffprune.layers import LayerCalibrationConfig

        return LayerCalibrationConfig(prompts=self.prompts, num_prompts=self.num_prompts, steps=self.steps,
                                      timesteps=min(self.timesteps, self.steps), guidance_scale=self.guidance_scale,
                                      batch_size=self.batch_size, seed=self.seed)


@dataclass(frozen=True)
class LayerStep:
    """Remove units of the U-Net: ``ratio`` of its parameters (or FLOPs) chosen by ``criterion``, or a
    handcrafted ``preset`` (BK-SDM)."""

    ratio: float | None = None
    preset: str | None = None
    criterion: str = "output-loss"
    budget: str = "params"
    granularity: str = "block"
    solver: str = "knapsack"
    seed: int = 0
    expressible: bool = False  # only transformer layers a plain diffusers config describes (granularity layer)

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.preset is None):
            raise DiffpruneError("layers: give either a ratio or a preset")
        if self.expressible and self.granularity != "layer":
            raise DiffpruneError("layers: expressible selection works on transformer layers: granularity 'layer'")
        if self.preset is not None and self.preset not in PRESETS:
            raise DiffpruneError(f"layers: unknown preset '{self.preset}' (choose from {', '.join(PRESETS)})")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise DiffpruneError(f"layers: ratio must be in (0, 1), got {self.ratio}")
        for name, allowed in (("criterion", CRITERIA), ("budget", BUDGETS), ("granularity", GRANULARITIES),
                              ("solver", SOLVERS)):
            if getattr(self, name) not in allowed:
                raise DiffpruneError(f"layers: unknown {name} '{getattr(self, name)}' "
                                     f"(choose from {', '.join(allowed)})")

    def to_dict(self) -> dict:
        if self.preset is not None:
            return {"preset": self.preset}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "preset" and (f.name != "expressible" or self.expressible)}


@dataclass(frozen=True)
class WeightStep:
    """Prune one component's weights by ``method`` to ``sparsity``; ``options`` are the method's own settings
    (``pattern``, ``include_conv``, ``scope``, ``seed``, ``base``, ...)."""

    method: str
    sparsity: float
    options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        self.config()  # a known method, and every option one it uses

    def config(self):
        return make_config(self.method, self.sparsity, **dict(self.options))

    def to_dict(self) -> dict:
        return {"method": self.method, "sparsity": self.sparsity, **dict(self.options)}

    @classmethod
    def from_dict(cls, data, where: str) -> "WeightStep":
        if not isinstance(data, dict) or "method" not in data or "sparsity" not in data:
            raise DiffpruneError(f"{where}: needs at least a method and a sparsity")
        rest = {k: v for k, v in data.items() if k not in ("method", "sparsity")}
        return cls(data["method"], data["sparsity"], tuple(sorted(rest.items())))


@dataclass(frozen=True)
class DistillStep:
    """Retrain the pruned U-Net against the original: ``data`` as ``diffprune distill --data`` takes it
    (``shapes[:N]``, ``prompts:FILE`` or an image-caption folder); ``options`` are
    :class:`~diffprune.distill.DistillConfig` fields (``steps``, ``batch_size``, ``lr``, ``feature_kd``, ...)."""

    data: str = "shapes"
    options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        self.config()  # every option a DistillConfig field, every value valid

    def config(self):
        from diffprune.distill import DistillConfig

        options = dict(self.options)
        _check_keys(DistillConfig, options, "distill")
        return DistillConfig(**options)

    def to_dict(self) -> dict:
        return {"data": self.data, **dict(self.options)}

    @classmethod
    def from_dict(cls, data) -> "DistillStep":
        if not isinstance(data, dict):
            raise DiffpruneError("distill: expected a mapping such as {data: shapes, steps: 1000}")
        rest = {k: v for k, v in data.items() if k != "data"}
        return cls(str(data.get("data", "shapes")), tuple(sorted(rest.items())))


@dataclass(frozen=True)
class Recipe:
    """The steps of every family, applied by :func:`~diffprune.recipe.compress` in a fixed order: layers, then
    weights (masks computed on the final graph), then distillation (the pruned U-Net retrained against the
    original, masks kept), then tokens."""

    name: str | None = None
    layers: LayerStep | None = None
    weights: dict[str, WeightStep] = field(default_factory=dict)
    distill: DistillStep | None = None
    tokens: str | None = None
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)

    def __post_init__(self) -> None:
        for component in self.weights:
            if component not in PRUNABLE_COMPONENTS and component != DENOISER:
                raise DiffpruneError(f"weights: '{component}' cannot be pruned (prunable components: "
                                     f"{', '.join(PRUNABLE_COMPONENTS)}, or {DENOISER} for whichever of unet and "
                                     "transformer the pipeline has)")
        if DENOISER in self.weights and set(self.weights) & {"unet", "transformer"}:
            raise DiffpruneError(f"weights: give {DENOISER} or unet/transformer, not both")
        if self.tokens is not None:
            parse_spec(self.tokens)
        if self.layers is None and not self.weights and self.tokens is None and self.distill is None:
            raise DiffpruneError("the recipe has no step: give layers, weights, distill or tokens")

    @property
    def needs_calibration(self) -> bool:
        layers = self.layers is not None and self.layers.preset is None and \
            self.layers.criterion in ("output-loss", "taylor")
        return layers or any(w.config().needs_calibration for w in self.weights.values())

    def to_dict(self) -> dict:
        out: dict = {}
        if self.name is not None:
            out["name"] = self.name
        if self.layers is not None:
            out["layers"] = self.layers.to_dict()
        if self.weights:
            out["weights"] = {c: w.to_dict() for c, w in self.weights.items()}
        if self.distill is not None:
            out["distill"] = self.distill.to_dict()
        if self.tokens is not None:
            out["tokens"] = self.tokens
        calibration = {f.name: getattr(self.calibration, f.name) for f in fields(CalibrationSpec)}
        if calibration["prompts"] is not None:
            calibration["prompts"] = list(calibration["prompts"])
        out["calibration"] = calibration
        return out

    @classmethod
    def from_dict(cls, data) -> "Recipe":
        _check_keys(cls, data, "recipe")
        weights = data.get("weights") or {}
        if not isinstance(weights, dict):
            raise DiffpruneError("recipe: weights must map components to {method, sparsity, ...}")
        try:
            return cls(name=data.get("name"),
                       layers=None if data.get("layers") is None else _strict(LayerStep, data["layers"], "layers"),
                       weights={c: WeightStep.from_dict(w, f"weights.{c}") for c, w in weights.items()},
                       distill=None if data.get("distill") is None else DistillStep.from_dict(data["distill"]),
                       tokens=data.get("tokens"),
                       calibration=_strict(CalibrationSpec, data.get("calibration") or {}, "calibration"))
        except TypeError as e:  # a value of the wrong kind where a dataclass expected another
            raise DiffpruneError(f"recipe: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        """Read a recipe from a ``.yaml``/``.yml`` or ``.json`` file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise DiffpruneError(f"cannot read the recipe {path}: {e.strerror or e}") from None
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except ValueError as e:
                raise DiffpruneError(f"{path} is not valid JSON: {e}") from None
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise DiffpruneError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        recipe = cls.from_dict(data)
        return recipe if recipe.name is not None else cls.from_dict({**data, "name": path.stem})

    def dumps(self, fmt: str = "yaml") -> str:
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2) + "\n"
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def example_recipes() -> dict[str, Path]:
    """The recipes shipped with diffprune, by name: ``sd2-study``, ``laptop-50``, ``atedm``, ``stack``, ``dit-half``."""
    folder = Path(__file__).with_name("examples")
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name, or a recipe file."""
    shipped = example_recipes()
    if str(name_or_path) in shipped and not Path(name_or_path).exists():
        return Recipe.load(shipped[str(name_or_path)])
    path = Path(name_or_path)
    if not path.is_file():
        raise DiffpruneError(f"no recipe file {path} (shipped recipes: {', '.join(shipped)})")
    return Recipe.load(path)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "on": True, "off": False}.get(text.lower(), text)


def _options(text: str, where: str) -> dict:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DiffpruneError(f"{where}: expected key=value, got '{item}'")
        out[key.strip()] = _value(value.strip())
    return out


def recipe_from_specs(layers: str | None = None, weights: list[str] | None = None, tokens: str | None = None,
                      calibration: dict | None = None, name: str | None = None) -> Recipe:
    """A recipe from command-line specs: ``layers`` = ``CRITERION:ratio=R[,key=value...]`` or ``preset:NAME``;
    each ``weights`` item = ``COMPONENT=METHOD:sparsity=S[,key=value...]``; ``tokens`` = a token pruning spec."""
    data: dict = {"name": name, "tokens": tokens, "calibration": calibration or {}}
    if layers is not None:
        head, _, rest = layers.partition(":")
        data["layers"] = {"preset": rest.strip()} if head.strip() == "preset" else \
            {"criterion": head.strip(), **_options(rest, "--layers")}
    if weights:
        data["weights"] = {}
        for item in weights:
            component, sep, spec = item.partition("=")
            method, _, rest = spec.partition(":")
            if not sep or not method.strip():
                raise DiffpruneError(f"--weights: expected COMPONENT=METHOD:sparsity=S, got '{item}'")
            if component.strip() in data["weights"]:
                raise DiffpruneError(f"--weights: '{component.strip()}' is given twice")
            data["weights"][component.strip()] = {"method": method.strip(), **_options(rest, f"--weights {item}")}
    return Recipe.from_dict({k: v for k, v in data.items() if v is not None})
