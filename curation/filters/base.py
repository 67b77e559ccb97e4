"""The filter framework: a filter is a small dataclass with parameters and a ``check``.

A concrete filter declares its parameters as dataclass fields made with :func:`param` (type,
default, help), names the record columns it reads, and implements
``check(record) -> (passed, score, reason)``. ``check_batch`` defaults to a loop over
``check``; override it where vectorising pays. Filters register themselves by name with
:func:`register`, and :func:`parse_step` turns ``"length:field=refinement,max_chars=4000"`` into
a configured instance, checking every parameter's name and type.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

from curation.errors import CurationError

#: Record columns (of the ``records_full`` view) a filter may ask for.
RECORD_FIELDS = ("prompt", "response", "feedback", "refinement", "gold_answer")


class StepError(CurationError):
    """A bad step name or parameter in ``--step``."""


class Result(NamedTuple):
    """The outcome of one filter on one record: drops are data, so both carry a reason."""

    passed: bool
    score: float | None = None
    reason: str | None = None
    detail: dict[str, Any] | None = None


def param(default: Any, help: str, choices: Sequence[str] | None = None) -> Any:
    """A filter parameter: a dataclass field with its default, help text and allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class Filter:
    """Base class of every filter step.

    Subclasses set ``name`` (the step name users type), ``description`` (one line), and
    ``columns`` (the record columns ``check`` reads, besides ``record_id``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    columns: ClassVar[tuple[str, ...]] = ()

    def check(self, record: Mapping[str, Any]) -> Result | tuple[Any, ...]:
        """Judge one record; returns ``(passed, score, reason)`` (optionally ``detail``)."""
        raise NotImplementedError

    def check_batch(self, records: Sequence[Mapping[str, Any]]) -> list[Result]:
        """Judge many records; override when a vectorised version is faster."""
        return [Result(*self.check(r)) for r in records]

    def params(self) -> dict[str, Any]:
        """The resolved parameters (recorded in ``runs.config`` and ``decisions.params``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def needed_columns(self) -> tuple[str, ...]:
        """Columns to fetch for this configured filter (may depend on parameters)."""
        return self.columns


_REGISTRY: dict[str, type[Filter]] = {}


def register(cls: type[Filter]) -> type[Filter]:
    """Class decorator adding a filter to the step registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty 'name'")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Filter]]:
    """All registered steps by name (importing the built-ins first)."""
    import curation.filters  # noqa: F401  (registers the built-ins)

    return dict(sorted(_REGISTRY.items()))


def get_filter(name: str) -> type[Filter]:
    """The filter class for a step name, or a StepError listing the valid names."""
    steps = registry()
    if name not in steps:
        raise StepError(f"unknown step {name!r}; valid steps: {', '.join(steps)}")
    return steps[name]


def param_specs(cls: type[Filter]) -> list[dict[str, Any]]:
    """Name, type, default, help and choices of each parameter of a filter class."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        specs.append(
            {
                "name": f.name,
                "type": _type_name(hints[f.name]),
                "default": f.default,
                "help": f.metadata.get("help", ""),
                "choices": f.metadata.get("choices"),
            }
        )
    return specs


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if _is_optional(tp) and args:
        return f"{_type_name(args[0])}?"
    return getattr(tp, "__name__", str(tp))


def _is_optional(tp: Any) -> bool:
    return (typing.get_origin(tp) in (typing.Union, types.UnionType)
            and type(None) in typing.get_args(tp))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(step: str, name: str, raw: str, tp: Any, choices: Sequence[str] | None) -> Any:
    """Turn the text of ``k=v`` into the parameter's declared type."""
    if _is_optional(tp):
        if raw.lower() in ("", "none", "null"):
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    try:
        if tp is bool:
            low = raw.lower()
            if low not in _TRUE | _FALSE:
                raise ValueError
            value: Any = low in _TRUE
        elif tp is int:
            value = int(raw)
        elif tp is float:
            value = float(raw)
        else:
            value = raw
    except ValueError:
        raise StepError(
            f"step {step!r}: parameter {name}={raw!r} is not a valid {_type_name(tp)}"
        ) from None
    if choices is not None and value not in choices:
        raise StepError(
            f"step {step!r}: parameter {name}={raw!r} must be one of: {', '.join(choices)}"
        )
    return value


# Split "a=1,b=x,y,c=2" on commas that start a new "key=": values may contain commas.
_PARAM_SPLIT = re.compile(r",(?=\s*[A-Za-z_][\w-]*\s*=)")


class Step(NamedTuple):
    """A configured filter and the label its decisions are written under."""

    label: str
    filter: Filter


def parse_step(spec: str) -> Step:
    """Parse ``NAME[:k=v,...]`` into a configured filter.

    ``as=LABEL`` (any step) sets the ``decisions.step`` label, needed when one filter is used
    twice in a run (e.g. ``length`` on two fields). Unknown names, unknown parameters and
    values of the wrong type raise :class:`StepError` naming the valid choices.
    """
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    cls = get_filter(name)
    specs = {s["name"]: s for s in param_specs(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    label = name
    for item in _PARAM_SPLIT.split(rest) if rest.strip() else []:
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise StepError(f"step {name!r}: expected k=v, got {item!r} (e.g. {_example(cls)})")
        if key == "as":
            label = raw.strip()
            if not re.fullmatch(r"[\w.:-]+", label):
                raise StepError(f"step {name!r}: as={raw!r} must be a non-empty label of "
                                "letters, digits, '_', '-', '.', ':'")
            continue
        if key not in specs:
            valid = ", ".join(specs) or "(none)"
            raise StepError(f"step {name!r} has no parameter {key!r}; valid parameters: {valid}")
        kwargs[key] = _convert(name, key, raw.strip(), hints[key], specs[key]["choices"])
    try:
        instance = cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise StepError(f"step {name!r}: {exc}") from None
    return Step(label, instance)


def _example(cls: type[Filter]) -> str:
    specs = param_specs(cls)
    if not specs:
        return cls.name
    s = specs[0]
    return f"{cls.name}:{s['name']}={s['default']}"


def field_text(record: Mapping[str, Any], field: str) -> str | None:
    """A text column of a record (``None`` stays ``None``)."""
    value = record.get(field)
    return None if value is None else str(value)


def check_field(value: str, allowed: Sequence[str] = RECORD_FIELDS) -> None:
    """Raise ValueError unless ``value`` names a record text column (used in __post_init__)."""
    if value not in allowed:
        raise ValueError(f"field={value!r} must be one of: {', '.join(allowed)}")
