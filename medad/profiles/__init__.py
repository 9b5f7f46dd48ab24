"""Per-chapter run profiles: ``quick`` (laptop CPU, minutes) and ``full`` (GPU, the paper's schedule).

Each chapter has one YAML file here, ``<chapter>.yml``, with a ``quick`` and a
``full`` mapping of parameter values and a ``schema`` mapping that declares
every parameter's type, range and meaning (see :mod:`medad.params`). A
notebook's ``parameters`` cell leaves a value at ``None`` to mean "the
profile's value"; anything set explicitly (for example with ``papermill -p
epochs 5``) wins over the profile. Every resolved set of parameters is
validated against the schema.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from medad.errors import ConfigError

PROFILE_DIR = Path(__file__).resolve().parent
PROFILES = ("quick", "full")


def chapters() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yml"))


def profile_file(chapter: str) -> Path:
    return PROFILE_DIR / f"{chapter}.yml"


def load(chapter: str) -> dict:
    path = profile_file(chapter)
    if not path.is_file():
        raise ConfigError(f"no profiles for chapter {chapter!r} ({path} missing); chapters with profiles: {', '.join(chapters())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    for profile in PROFILES:
        if not isinstance(data.get(profile), dict):
            raise ConfigError(f"{path}: needs a '{profile}' mapping of parameter values")
    if not isinstance(data.get("schema"), dict):
        raise ConfigError(f"{path}: needs a 'schema' mapping that declares every parameter (see medad/params.py)")
    for profile in PROFILES:
        undeclared = sorted(set(data[profile]) - set(data["schema"]))
        if undeclared:
            raise ConfigError(f"{path}: '{profile}' sets {', '.join(undeclared)}, not declared in its 'schema'")
    return data


def schema(chapter: str) -> dict:
    """The chapter's parameter declarations (name -> {type, min, ..., help})."""
    return load(chapter)["schema"]


def schema_key(chapter: str) -> str:
    """A digest of the schema, so a validator built from it is rebuilt when the YAML changes."""
    return hashlib.sha256(json.dumps(schema(chapter), sort_keys=True, default=str).encode()).hexdigest()


def named_profiles(chapter: str) -> list[str]:
    """Every value mapping in the chapter's YAML: quick, full and any extra (e.g. prob_unet's long_cpu)."""
    return [k for k, v in load(chapter).items() if k != "schema" and isinstance(v, dict)]


def resolve(chapter: str, profile: str, **given) -> dict:
    """The chapter's parameters: the profile's values, overridden by every ``given`` value that is not None, validated."""
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    return resolve_named(chapter, profile, given)


def resolve_named(chapter: str, profile: str, given: dict | None = None, drop: tuple = ()) -> dict:
    """Like :func:`resolve` for any mapping of the YAML (command lines use extra ones such as ``long_cpu``).

    ``drop``: keys of the mapping that are not parameters (a nested override mapping) and are left out.
    """
    from medad import params

    data = load(chapter)
    if profile not in named_profiles(chapter):
        raise ConfigError(f"{chapter}: profile must be one of {', '.join(named_profiles(chapter))}, got {profile!r}")
    values = {k: v for k, v in data[profile].items() if k not in drop}
    params.check_exclusions(chapter, given or {})
    values.update({k: v for k, v in (given or {}).items() if v is not None})
    values = params.validate(chapter, params.with_defaults(chapter, values))
    values["profile"] = profile
    return params.Config(values)
