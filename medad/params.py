"""Validation of a chapter's parameters against the typed schema its profile declares.

Every chapter's ``medad/profiles/<chapter>.yml`` has, next to its ``quick`` and
``full`` values, a ``schema`` mapping that declares each parameter::

    schema:
      epochs:   {type: int, min: 1, help: "passes over the training images"}
      lr:       {type: float, gt: 0, help: "learning rate"}
      datasets: {type: "list[str]", choices: [lgg_brain_ad, endoscopy_ad], help: "..."}
      threads:  {type: int, min: 1, optional: true, help: "CPU threads; null = torch default"}

Keys beyond the type: ``default`` (the value a profile that does not set the parameter gets; an
``optional`` parameter without one gets ``null``), and ``choices_from: module:NAME`` (the choices
are the keys of a registry in the code, e.g. ``medad.models.ambiguous:MODELS``, so they are
written once).

Types: ``int``, ``float``, ``bool``, ``str``, ``list[int]``, ``list[float]``, ``list[str]``
``dict[str, int]`` (a name -> count mapping) and ``mapping`` (a nested mapping whose
structure the chapter's own code checks, e.g. ViP's per-backbone ``limits``). Keys: ``min``/``max`` (inclusive),
``gt``/``lt`` (exclusive), ``choices``, ``optional`` (``null`` allowed), ``min_items``/``max_items``
(a list's length; ``min_items`` is 1 unless declared: an empty list of datasets, models or seeds
is a mistake, so a list that may be empty says ``min_items: 0``) and ``help``.
For a list, the bounds and choices apply to every element.

:func:`validate` builds a pydantic model from that declaration and checks a whole
parameter mapping at once; ``medad.profiles.resolve`` calls it, so a notebook's
parameters (papermill ``-p``), ``python -m medad book`` and the module command
lines all go through this one check. Rules beyond pydantic's defaults:

- an unknown parameter is an error that lists the known ones;
- a bare string is never read as a list (``-p models unet`` would otherwise be
  ``['u', 'n', 'e', 't']``): give a list (``-y "models: [unet]"``);
- an int must be a whole number: ``2.5`` and ``True`` are refused; a string of
  digits (``papermill -r seed 3``) is read as the number, as pydantic does;
- a float accepts ints and numeric strings, never booleans, and must be finite (``inf`` and
  ``nan`` are refused);
- an int must fit in 64 bits (torch and NumPy seeds, counts), whatever the schema's bounds;
- a notebook's own parameters (those its ``parameters`` cell declares but it does not pass to
  ``ChapterRun``, e.g. the atlas's ``dataset`` or a chapter's ``long_run``) are declared in the
  schema too and checked by :func:`validate` through ``ChapterRun`` like the others.

Errors are :class:`~medad.errors.ConfigError` naming the chapter, the
parameter, the value given and what is allowed.
"""
from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Literal, Optional

import annotated_types as at
import pydantic
from pydantic import AfterValidator, BeforeValidator

from medad.errors import ConfigError

SCALARS = {"int": int, "float": float, "bool": bool, "str": str}
TYPES = (*SCALARS, "list[int]", "list[float]", "list[str]", "dict[str, int]", "mapping")
SPEC_KEYS = {"type", "min", "max", "gt", "lt", "choices", "choices_from", "optional", "default", "excludes",
             "min_items", "max_items", "help"}
INT64 = (-(2**63), 2**63 - 1)


class Config(dict):
    """A chapter's validated parameters: ``cfg["epochs"]`` or ``cfg.epochs``; every declared parameter is present."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}; parameters: {', '.join(sorted(self))}") from None

    def __reduce__(self):
        return (Config, (dict(self),))


def registry_choices(reference: str) -> list:
    """``module:NAME`` -> the keys (or items) of that registry (or of what that function returns),
    e.g. ``medad.models.ambiguous:MODELS`` or ``medad.data.registry:list_datasets``."""
    import importlib

    module, _, attr = str(reference).partition(":")
    try:
        value = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"choices_from {reference!r}: {exc}") from None
    if callable(value):
        value = value()
    return list(value.keys()) if hasattr(value, "keys") else list(value)


def _choices(spec: dict) -> list | None:
    if "choices_from" in spec:
        return registry_choices(spec["choices_from"])
    return list(spec["choices"]) if "choices" in spec else None


def _no_bool(value):
    # pydantic reads True as 1 for numbers; a flag given for a count is a mistake, not a 1
    if isinstance(value, bool):
        raise ValueError("a number is expected, not a boolean")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("a finite number is expected, not infinity or NaN")
    return value


def _no_bare_string(value):
    if isinstance(value, str):
        raise ValueError("a list is expected, not a single string; give a list, e.g. -y \"name: [a, b]\"")
    return value


def _element_type(name: str, spec: dict):
    """The annotated type of one value (or of each element of a list) with its bounds and choices."""
    base = SCALARS[name]
    choices = _choices(spec)
    if choices is not None:
        return Literal[tuple(choices)]
    low, high = spec.get("min"), spec.get("max")
    if base is int:  # what torch and NumPy take as a seed or a count (two Ge's would not combine: the last wins)
        low = INT64[0] if low is None else max(low, INT64[0])
        high = INT64[1] if high is None else min(high, INT64[1])
    bounds = [at.Ge(low)] if low is not None else []
    bounds += [at.Le(high)] if high is not None else []
    bounds += [at.Gt(spec["gt"])] if "gt" in spec else []
    bounds += [at.Lt(spec["lt"])] if "lt" in spec else []
    checks = [BeforeValidator(_no_bool)] if base in (int, float) else []
    checks += [AfterValidator(_finite)] if base is float else []
    return Annotated[(base, *bounds, *checks)] if bounds or checks else base


def _field_type(chapter: str, param: str, spec) -> Any:
    where = f"medad/profiles/{chapter}.yml, schema.{param}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: needs a mapping with a 'type' (one of {', '.join(TYPES)})")
    extra = set(spec) - SPEC_KEYS
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(SPEC_KEYS))}")
    kind = str(spec["type"]).replace(" ", "")
    if kind not in {t.replace(" ", "") for t in TYPES}:
        raise ConfigError(f"{where}: type {spec['type']!r} is not one of {', '.join(TYPES)}")
    if ("min_items" in spec or "max_items" in spec) and not kind.startswith("list["):
        raise ConfigError(f"{where}: min_items / max_items apply to a list type, not {spec['type']!r}")
    if kind in SCALARS:
        typ = _element_type(kind, spec)
    elif kind.startswith("list["):
        lengths = [at.MinLen(int(spec.get("min_items", 1)))] + ([at.MaxLen(int(spec["max_items"]))] if "max_items" in spec else [])
        typ = Annotated[(list[_element_type(kind[5:-1], spec)], *lengths, BeforeValidator(_no_bare_string))]
    elif kind == "mapping":
        typ = dict[str, Any]
    else:  # dict[str, int]: the bounds apply to the counts
        typ = dict[str, _element_type("int", {k: v for k, v in spec.items() if k != "choices"})]
    return Optional[typ] if spec.get("optional") else typ


@functools.lru_cache(maxsize=None)
def _model(chapter: str, schema_key: str) -> type[pydantic.BaseModel]:
    from medad import profiles

    schema = profiles.schema(chapter)
    # a profile need not set every declared parameter (the chapter then uses its own default)
    fields = {name: (_field_type(chapter, name, spec), None) for name, spec in schema.items()}
    config = pydantic.ConfigDict(extra="forbid")
    return pydantic.create_model(f"{chapter}_parameters", __config__=config, **fields)


def _allowed(spec: dict) -> str:
    """What a schema entry accepts, in words, for error messages and the parameter table."""
    choices = _choices(spec)
    rules = ["one of " + ", ".join(map(str, choices))] if choices is not None else []
    rules += [f"{word} {spec[key]}" for key, word in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<")) if key in spec]
    # a list's length only where the schema declares it (the default, at least one item, goes unsaid)
    rules += ["may be empty"] if spec.get("min_items") == 0 else []
    rules += [f"at least {spec['min_items']} items"] if spec.get("min_items", 1) > 1 else []
    rules += [f"at most {spec['max_items']} items"] if "max_items" in spec else []
    rules += ["or null"] if spec.get("optional") else []
    return ", ".join([str(spec["type"]), *rules])


def check_exclusions(chapter: str, given: dict) -> None:
    """Parameters that cannot both be given (``excludes``), e.g. Prob. U-Net's ``epochs`` and ``iterations``."""
    from medad import profiles

    for name, spec in profiles.schema(chapter).items():
        if given.get(name) is None:
            continue
        clash = [other for other in spec.get("excludes", ()) if given.get(other) is not None]
        if clash:
            raise ConfigError(f"{chapter}: {name} and {', '.join(clash)} were both given; they say the same thing "
                              f"two ways ({spec.get('help', '')}): give one")


def with_defaults(chapter: str, values: dict) -> dict:
    """``values`` plus every declared parameter they lack: its ``default``, or None when it is ``optional``."""
    from medad import profiles

    out = dict(values)
    missing = []
    for name, spec in profiles.schema(chapter).items():
        if name in out:
            continue
        if "default" in spec:
            out[name] = spec["default"]
        elif spec.get("optional"):
            out[name] = None
        else:
            missing.append(name)
    if missing:
        raise ConfigError(f"{chapter}: no value for {', '.join(missing)}: the profile sets none and the schema "
                          f"(medad/profiles/{chapter}.yml) declares no default")
    return out


def validate(chapter: str, values: dict) -> dict:
    """``values`` checked against the chapter's schema; returns them converted (``"3"`` -> 3 for an int)."""
    from medad import profiles

    schema = profiles.schema(chapter)
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise ConfigError(f"{chapter}: unknown parameter(s) {', '.join(unknown)}; "
                          f"known parameters: {', '.join(sorted(schema))}")
    model = _model(chapter, profiles.schema_key(chapter))
    try:
        checked = model(**values)
    except pydantic.ValidationError as exc:
        problems = {}
        for err in exc.errors():  # the first problem of each parameter
            name = str(err["loc"][0])
            if name in problems:
                continue
            spec = schema[name]
            element = f" (element {err['loc'][1]!r})" if len(err["loc"]) > 1 and "[" in str(spec["type"]) else ""
            why = err["msg"].replace("Value error, ", "").replace("Input should be", "must be")
            problems[name] = (f"parameter {name!r} = {values.get(name)!r}{element}: {why}; "
                              f"allowed: {_allowed(spec)}" + (f" ({spec['help']})" if spec.get("help") else ""))
        lines = list(problems.values())
        raise ConfigError(f"{chapter}: " + "; ".join(lines)) from None
    return {name: getattr(checked, name) for name in values}


def parameter_table(chapter: str) -> list[dict]:
    """One row per declared parameter: name, quick value, full value, what is allowed, help (for the book)."""
    from medad import profiles

    data = profiles.load(chapter)
    return [
        {"name": name, "quick": data["quick"].get(name, spec.get("default")), "full": data["full"].get(name, spec.get("default")),
         "allowed": _allowed(spec), "help": spec.get("help", "")}
        for name, spec in profiles.schema(chapter).items()
    ]
