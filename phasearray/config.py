"""Pipelines: the validated, frozen description of a sweep.

A pipeline is a YAML file with the sections ``model``, ``data``, ``grid``,
``train``, ``record`` and ``engine``. It is read once, at the boundary, into
frozen pydantic models; every later piece trusts it. A bad value raises
:class:`~phasearray.errors.ConfigError` naming the field by its dotted path,
echoing the value and saying what is allowed.

pydantic is used rather than hand-written dataclass checks because it already
reports the location and the input of every violation, forbids unknown keys
and keeps models immutable; phasearray only rewords its messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "DTYPES",
    "ENGINES",
    "SCHEDULES",
    "Pipeline",
    "load_pipeline",
    "named_pipelines",
    "parse_pipeline",
    "variant_pipelines",
]

logger = logging.getLogger(__name__)

ACTIVATIONS = ("tanh", "relu", "identity")
SCHEDULES = ("sequential", "shuffle", "iid")
DTYPES = ("float64", "float32")
# Engines that train W2 alone (model.trainable = [W2]).
FUSED_ENGINES = ("numba", "cupy-fused")
ENGINES = ("auto", "numpy", "numba", "cupy", "cupy-fused")

PositiveInt = Annotated[int, Field(ge=1)]
# Upper bounds far beyond any study (the paper: widths ≤ 32, T ≤ 64, σ_W ≤ 256,
# 10^8 steps) that keep a typo from asking for terabytes or overflowing.
Width = Annotated[int, Field(ge=1, le=4096)]
Scale = Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]

# Dims and coordinates every store has; a study's own dim must differ.
STORE_DIMS = (
    "T",
    "sigma_W",
    "seed",
    "t",
    "eigen",
    "unit0",
    "unit1",
    "unit2",
    "unit3",
    "sample",
    "test_sample",
    "slot",
    "inv_sigma_W",
    "learning_rate",
    "epoch",
    "W2_recorded",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


_LOG2_LIMIT = 64


def _expand_axis(value: Any) -> Any:
    """Turn ``{log2: [a, b]}`` into ``[2**a, ..., 2**b]``; leave lists alone."""
    if isinstance(value, Mapping) and set(value) == {"log2"}:
        bounds = value["log2"]
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
            or bounds[0] > bounds[1]
        ):
            raise ValueError(
                f"log2 range must be two integers [first, last] with first <= last, "
                f"got {bounds!r}"
            )
        if max(abs(b) for b in bounds) > _LOG2_LIMIT:
            raise ValueError(
                f"log2 range must lie within [-{_LOG2_LIMIT}, {_LOG2_LIMIT}] "
                f"(2^±{_LOG2_LIMIT} is far beyond any learning rate or weight "
                f"scale), got {bounds!r}"
            )
        return [float(2.0**k) for k in range(bounds[0], bounds[1] + 1)]
    return value


LAYERS = ("W1", "W2", "W3")


class Model(_Section):
    """Network shape: widths (n0, n1, n2, n3), activation, trainable layers.

    ``trainable`` lists the weight matrices SGD updates; it must include W2
    (whose spectrum is the subject). Trained W1 and W3 start from the
    teacher's W̄1 and W̄3, the values they keep when frozen, so that the
    initial network is the same whichever layers train and σ_W stays the only
    disorder.
    """

    widths: tuple[Width, Width, Width, Width] = (3, 32, 16, 1)
    activation: Literal["tanh", "relu", "identity"] = "tanh"
    trainable: tuple[Literal["W1", "W2", "W3"], ...] = ("W2",)

    @field_validator("widths", "trainable", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("trainable")
    @classmethod
    def _trains_W2(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "W2" not in value or len(set(value)) != len(value):
            raise ValueError(
                f"must list distinct layers of {list(LAYERS)} and include W2, "
                "e.g. [W2] or [W1, W2, W3]"
            )
        return tuple(layer for layer in LAYERS if layer in value)

    @property
    def trains_outer(self) -> bool:
        """Whether W1 or W3 train besides W2."""
        return self.trainable != ("W2",)

    @field_validator("widths", mode="before")
    @classmethod
    def _four_widths(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) != 4:
            raise ValueError(
                f"needs exactly 4 widths [n0, n1, n2, n3] (two hidden layers), "
                f"got {len(value)}"
            )
        return value


class Data(_Section):
    """Inputs and the sizes of the training and test sets.

    ``gaussian``: x ~ N(0, I_n0). ``digits``: the 8×8 handwritten digits that
    scikit-learn ships (1 797 images, n0 = 64, pixels standardised), split per
    seed into training and test sets; no download at run time.
    """

    source: Literal["gaussian", "digits"] = "gaussian"
    n_train: Annotated[int, Field(ge=1, le=10_000_000)] = 4000
    n_test: Annotated[int, Field(ge=1, le=1_000_000)] = 128


class Grid(_Section):
    """The (T, sigma_W, seed) grid; ``{log2: [a, b]}`` expands to powers of two."""

    T: tuple[Scale, ...]
    sigma_W: tuple[Scale, ...]
    seeds: Annotated[int, Field(ge=1, le=100_000)] = 8
    first_seed: Annotated[int, Field(ge=0, le=2**62)] = 0
    fresh_teachers: bool = False

    @field_validator("T", "sigma_W", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        value = _expand_axis(value)
        return tuple(value) if isinstance(value, list) else value

    @field_validator("T", "sigma_W")
    @classmethod
    def _nonempty_unique(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("needs at least one value")
        if len(set(value)) != len(value):
            raise ValueError(f"values must be distinct, got {list(value)}")
        return tuple(sorted(value))


class Train(_Section):
    """Plain SGD: batch size, number of steps, minibatch schedule, precision."""

    batch_size: PositiveInt = 4
    steps: Annotated[int, Field(ge=1, le=10**12)] = 100_000
    schedule: Literal["sequential", "shuffle", "iid"] = "shuffle"
    dtype: Literal["float64", "float32"] = "float64"


class LogCheckpoints(_Section):
    """About ``log`` log-spaced checkpoints between step 1 and the last step."""

    log: Annotated[int, Field(ge=2, le=10_000)]


class Record(_Section):
    """Checkpoints (steps), where to keep the full W2, and the chaos probe.

    ``lyapunov: true`` trains a twin of every model from W2(0) + d0 (a random
    direction of relative size ``lyapunov_perturbation``) on the same
    minibatches, renormalises the separation every ``lyapunov_interval`` steps
    and records the finite-time maximal Lyapunov exponent (about twice the
    training cost).
    """

    checkpoints: LogCheckpoints | tuple[Annotated[int, Field(ge=0)], ...] = (
        LogCheckpoints(log=30)
    )
    W2: Literal["all", "ends"] | tuple[Annotated[int, Field(ge=0)], ...] = "all"
    lyapunov: bool = False
    lyapunov_interval: PositiveInt = 100
    lyapunov_perturbation: Annotated[float, Field(gt=0, le=1e-2)] = 1e-8

    @field_validator("checkpoints", "W2", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class Engine(_Section):
    """Which engine advances the models, and how many train together per block."""

    name: Literal["auto", "numpy", "numba", "cupy", "cupy-fused"] = "auto"
    block_models: Annotated[int, Field(ge=1, le=1_000_000)] = 512


class Variants(_Section):
    """A study: the same pipeline once per value of one field.

    Each variant is stored apart (``<store>/<dim>=<label>.zarr``) and
    :func:`phasearray.study.open_study` joins them along a new dim ``dim``.
    """

    dim: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    field: str
    values: tuple[Any, ...]
    labels: tuple[str | int | float, ...] | None = None

    @field_validator("dim")
    @classmethod
    def _not_a_store_dim(cls, value: str) -> str:
        if value in STORE_DIMS:
            raise ValueError(
                f"a dim of every store ({', '.join(STORE_DIMS)}) cannot name the "
                "variants, choose another name, e.g. the field's own (batch_size, "
                "activation)"
            )
        return value

    @field_validator("values", "labels", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    # defined after _list_to_tuple, so it runs first and sees the list as given
    @field_validator("values", mode="before")
    @classmethod
    def _some_distinct_values(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("a study needs a value")
            if len(set(map(repr, value))) != len(value):
                raise ValueError("values must be distinct")
        return value


class Pipeline(_Section):
    """A whole sweep. See ``pipelines/quick.yaml`` for an annotated example.

    Examples
    --------
    >>> p = parse_pipeline({"grid": {"T": [0.5], "sigma_W": [1.0], "seeds": 2}})
    >>> p.train.steps, p.n_models
    (100000, 2)
    """

    # the store is runs/<name>.zarr: a file name, never a path
    name: Annotated[
        str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$", max_length=120)
    ] = "sweep"
    description: str = ""
    model: Model = Model()
    data: Data = Data()
    grid: Grid
    train: Train = Train()
    record: Record = Record()
    engine: Engine = Engine()
    variants: Variants | None = None

    @property
    def n_models(self) -> int:
        return len(self.grid.T) * len(self.grid.sigma_W) * self.grid.seeds

    @property
    def seeds(self) -> np.ndarray:
        return self.grid.first_seed + np.arange(self.grid.seeds, dtype=np.int64)

    @property
    def steps_per_epoch(self) -> int:
        """Minibatches per pass over the training set, |D| // |B|."""
        return self.data.n_train // self.train.batch_size

    @property
    def engine_shape(self) -> tuple[int, int, int, int]:
        """(n1, n2, n3, batch_size): what decides whether a kernel fits."""
        _, n1, n2, n3 = self.model.widths
        return n1, n2, n3, self.train.batch_size

    @property
    def checkpoints(self) -> np.ndarray:
        """Checkpoint steps, ascending, always including 0 and the last step."""
        spec = self.record.checkpoints
        if isinstance(spec, LogCheckpoints):
            return log_checkpoints(self.train.steps, spec.log)
        return np.asarray(sorted({0, *spec, self.train.steps}), dtype=np.int64)

    @property
    def W2_checkpoints(self) -> np.ndarray:
        """Boolean mask over :attr:`checkpoints`: where the full W2 is kept."""
        t = self.checkpoints
        spec = self.record.W2
        if spec == "all":
            return np.ones(t.size, dtype=bool)
        if spec == "ends":
            return (t == 0) | (t == self.train.steps)
        return np.isin(t, [0, *spec, self.train.steps])

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able form with every default filled in."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """Hash of what determines the stored numbers (not name or engine)."""
        content = self.to_dict()
        for key in ("name", "description", "engine"):
            content.pop(key)
        text = json.dumps(content, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def log_checkpoints(steps: int, n: int) -> np.ndarray:
    """Roughly ``n`` log-spaced integer steps in [1, steps], plus step 0.

    Parameters
    ----------
    steps : int
        Last step, always included.
    n : int
        Number of log-spaced points asked for; duplicates after rounding to
        integers are dropped, so fewer may come back for small ``steps``.

    Returns
    -------
    numpy.ndarray, dims (checkpoint,), int64
    """
    points = np.unique(np.rint(np.geomspace(1, steps, n)).astype(np.int64))
    return np.concatenate([[0], points]).astype(np.int64)


# --- reading and validation ----------------------------------------------------


def named_pipelines() -> dict[str, Path]:
    """Pipelines shipped with phasearray, by name (``quick``, ``paper``, ...)."""
    folder = resources.files("phasearray") / "pipelines"
    return {
        Path(str(entry)).stem: Path(str(entry))
        for entry in folder.iterdir()
        if str(entry).endswith(".yaml")
    }


def load_pipeline(
    source: str | Path | None = None, overrides: Sequence[str] = ()
) -> Pipeline:
    """Read, override and validate a pipeline.

    Parameters
    ----------
    source : str or path, optional
        A YAML file, or the name of a shipped pipeline (``quick``, ``paper``).
        ``None`` means ``quick``.
    overrides : sequence of str
        ``dotted.path=value`` items; the value is read as YAML, so
        ``grid.T=[0.5, 1.0]`` sets a list and ``train.steps=2000`` an integer.

    Raises
    ------
    ConfigError
        The file is missing or unreadable, or a value is not allowed.
    """
    path = _resolve_source(source)
    raw = _read_yaml(path)
    for item in overrides:
        _apply_override(raw, item)
    pipeline = parse_pipeline(raw)
    if overrides:
        note = f" (with {', '.join(overrides)})"
        pipeline = pipeline.model_copy(
            update={"description": pipeline.description + note}
        )
    logger.debug("pipeline %s read from %s", pipeline.name, path)
    return pipeline


def parse_pipeline(raw: Any) -> Pipeline:
    """Validate a mapping (as read from YAML) into a :class:`Pipeline`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"a pipeline must be a mapping of sections, got {type(raw).__name__}: "
            f"{raw!r:.80}"
        )
    try:
        pipeline = Pipeline.model_validate(dict(raw))
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
    _check_consistency(pipeline)
    return pipeline


def _resolve_source(source: str | Path | None) -> Path:
    if source is None:
        source = "quick"
    path = Path(source)
    if path.is_file():
        return path
    named = named_pipelines()
    if str(source) in named:
        return named[str(source)]
    if path.exists():
        raise ConfigError(f"pipeline {str(source)!r} is not a file")
    raise ConfigError(
        f"pipeline file not found: {str(source)!r}; give a YAML file or one of the "
        f"shipped pipelines: {', '.join(sorted(named))}"
    )


class _Loader(yaml.SafeLoader):
    """YAML with the 1.2 float syntax, so ``1e-4`` is a number, not a string,
    and no key given twice in one mapping (YAML forbids it; PyYAML would keep
    the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no objects


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read pipeline {str(path)!r}: {error}") from None
    try:
        return _yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"pipeline {str(path)!r} is not valid YAML: {error}"
        ) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override {item!r} must look like dotted.path=value, e.g. train.steps=2000"
        )
    try:
        value = _yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"override {item!r}: value is not valid YAML: {error}"
        ) from None

    node = raw
    parts = key.strip().split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(
                f"override {item!r}: field {where!r} holds {child!r}, not a section"
            )
        node = child
    node[parts[-1]] = value


def _describe(error: ValidationError) -> str:
    """One line per violation: the dotted field, the value, what is allowed."""
    lines = []
    for detail in error.errors(include_url=False):
        loc = [str(part) for part in detail["loc"] if not _is_union_tag(part)]
        field = ".".join(loc) or "pipeline"
        if detail["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            lines.append(f"unknown field {field!r}; allowed here: {', '.join(allowed)}")
            continue
        if detail["type"] == "missing":
            lines.append(f"field {field!r} is required")
            continue
        value = detail.get("input")
        compound = detail["type"].endswith("_type") or detail["type"] in (
            "literal_error",
            "string_pattern_mismatch",
        )
        hint = _SHAPE_HINTS.get(field) if compound else None
        lines.append(f"field {field!r}: got {value!r}; {hint or _allowed_text(detail)}")
    unique = list(dict.fromkeys(lines))
    return "invalid pipeline:\n  " + "\n  ".join(unique)


# What a field of a compound type accepts, said once instead of once per
# branch of pydantic's union.
_SHAPE_HINTS = {
    "name": "must be a file name: letters, digits and . _ = + , - (no slash), "
    "starting with a letter or digit",
    "grid.T": "must be a list of positive numbers or {log2: [first, last]}",
    "grid.sigma_W": "must be a list of positive numbers or {log2: [first, last]}",
    "record.checkpoints": "must be a list of steps or {log: N}",
    "record.W2": "must be 'all', 'ends' or a list of checkpoint steps",
    "model.widths": "must be a list of 4 positive integers [n0, n1, n2, n3]",
    "engine": "must be a section with keys name, block_models "
    "(choose the engine with engine.name, e.g. --set engine.name=numba)",
    **{
        section: f"must be a section (a mapping of its fields, e.g. {section}.KEY=VALUE)"
        for section in ("model", "data", "grid", "train", "record", "variants")
    },
}


def _is_union_tag(part: Any) -> bool:
    # pydantic names the branch of a union it tried ("LogCheckpoints",
    # "tuple[...]"); that is noise for a user.
    return isinstance(part, str) and ("[" in part or part in _UNION_TAGS)


_UNION_TAGS = {"LogCheckpoints"}


def _allowed_text(detail: Mapping[str, Any]) -> str:
    message = str(detail["msg"])
    message = message.replace("Input should be", "must be").replace("Value error, ", "")
    return message


def _allowed_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = Pipeline
    for part in loc:
        annotation = model.model_fields.get(part)
        if annotation is None:
            return []
        candidate = annotation.annotation
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            model = candidate
        elif part == "checkpoints":
            model = LogCheckpoints
        else:
            return []
    return sorted(model.model_fields)


def _check_consistency(pipeline: Pipeline) -> None:
    """Checks that involve more than one field."""
    train, data, record = pipeline.train, pipeline.data, pipeline.record
    if data.source == "digits":
        _check_digits(pipeline)
    if record.lyapunov:
        _check_perturbation(record.lyapunov_perturbation, train.dtype)
        if pipeline.model.trains_outer:
            raise ConfigError(
                f"field 'record.lyapunov': true needs model.trainable = [W2], got "
                f"{list(pipeline.model.trainable)}; the twin perturbs W2 only. "
                "Set record.lyapunov: false or train W2 alone"
            )
    if pipeline.model.trains_outer and pipeline.engine.name in FUSED_ENGINES:
        raise ConfigError(
            f"field 'engine.name': got {pipeline.engine.name!r}; with model.trainable "
            f"= {list(pipeline.model.trainable)} choose auto, numpy or cupy (the "
            "fused engines train W2 alone)"
        )
    if pipeline.variants is not None:
        variant_pipelines(pipeline)  # each variant must be valid on its own
    if train.batch_size > data.n_train:
        raise ConfigError(
            f"field 'train.batch_size': got {train.batch_size}; must be at most "
            f"data.n_train = {data.n_train}"
        )
    for field, steps in (
        ("record.checkpoints", record.checkpoints),
        ("record.W2", record.W2),
    ):
        if isinstance(steps, tuple):
            _check_steps(field, steps, train.steps)
    if isinstance(record.W2, tuple):
        missing = sorted(set(record.W2) - set(pipeline.checkpoints.tolist()))
        if missing:
            raise ConfigError(
                f"field 'record.W2': got {list(record.W2)}; steps {missing} are not "
                "checkpoints; W2 can be kept only at checkpoints"
            )


def variant_pipelines(pipeline: Pipeline) -> list[tuple[Any, Pipeline]]:
    """The pipelines of a study, one per value of ``variants.field``.

    Returns
    -------
    list of (label, Pipeline)
        Labels are ``variants.labels`` or the values themselves (their position
        where a value is not a number or string).
    """
    variants = pipeline.variants
    if variants is None:
        return [(None, pipeline)]
    labels = variants.labels or tuple(
        v if isinstance(v, int | float | str) and not isinstance(v, bool) else i
        for i, v in enumerate(variants.values)
    )
    if len(labels) != len(variants.values) or len(set(labels)) != len(labels):
        raise ConfigError(
            f"field 'variants.labels': got {list(labels)}; need one distinct label "
            f"per value ({len(variants.values)})"
        )
    base = pipeline.to_dict()
    base.pop("variants")
    out = []
    for label, value in zip(labels, variants.values, strict=True):
        raw = json.loads(json.dumps(base))
        _apply_override(raw, f"{variants.field}={json.dumps(value)}")
        raw["name"] = f"{pipeline.name}-{variants.dim}={label}"
        try:
            out.append((label, parse_pipeline(raw)))
        except ConfigError as error:
            raise ConfigError(
                f"field 'variants.values': {variants.field} = {value!r} gives an "
                f"invalid pipeline: {error}"
            ) from None
    return out


DIGITS_SAMPLES, DIGITS_PIXELS = 1797, 64


def _check_perturbation(perturbation: float, dtype: str) -> None:
    """The twin's separation must be well above the rounding of the weights."""
    smallest = 100 * float(np.finfo(dtype).eps)
    if perturbation < smallest:
        raise ConfigError(
            f"field 'record.lyapunov_perturbation': got {perturbation:g}; with "
            f"train.dtype {dtype} it must be at least {smallest:.1e} (100 × the "
            "precision), e.g. 1e-4 for float32"
        )


def _check_digits(pipeline: Pipeline) -> None:
    data, n0 = pipeline.data, pipeline.model.widths[0]
    if n0 != DIGITS_PIXELS:
        raise ConfigError(
            f"field 'model.widths': got n0 = {n0}; data.source 'digits' has "
            f"{DIGITS_PIXELS} pixels, so n0 must be {DIGITS_PIXELS}"
        )
    if data.n_train + data.n_test > DIGITS_SAMPLES:
        raise ConfigError(
            f"fields 'data.n_train' + 'data.n_test': got {data.n_train} + "
            f"{data.n_test}; the digits data set has {DIGITS_SAMPLES} images"
        )


def _check_steps(field: str, steps: tuple[int, ...], last: int) -> None:
    if list(steps) != sorted(set(steps)):
        raise ConfigError(
            f"field {field!r}: got {list(steps)}; must be strictly increasing steps"
        )
    if steps and steps[-1] > last:
        raise ConfigError(
            f"field {field!r}: got {list(steps)}; steps must lie in [0, train.steps = "
            f"{last}]"
        )
