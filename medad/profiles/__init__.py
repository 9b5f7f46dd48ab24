"""Per-chapter run profiles: ``quick`` (laptop CPU, minutes) and ``full`` (GPU, the paper's schedule).

Each chapter has one YAML file here, ``<chapter>.yml``, with a ``quick`` and a
``full`` mapping of parameter values. A notebook's ``parameters`` cell leaves a
value at ``None`` to mean "the profile's value"; anything set explicitly (for
example with ``papermill -p epochs 5``) wins over the profile.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from medad.errors import ConfigError

PROFILE_DIR = Path(__file__).resolve().parent
PROFILES = ("quick", "full")


def chapters() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yml"))


def load(chapter: str) -> dict:
    path = PROFILE_DIR / f"{chapter}.yml"
    if not path.is_file():
        raise ConfigError(f"no profiles for chapter {chapter!r} ({path} missing); chapters with profiles: {', '.join(chapters())}")
    data = yaml.safe_load(path.read_text()) or {}
    for profile in PROFILES:
        if not isinstance(data.get(profile), dict):
            raise ConfigError(f"{path}: needs a '{profile}' mapping of parameter values")
    return data


def resolve(chapter: str, profile: str, **given) -> dict:
    """The chapter's parameters: the profile's values, overridden by every ``given`` value that is not None."""
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    values = dict(load(chapter)[profile])
    values.update({k: v for k, v in given.items() if v is not None})
    values["profile"] = profile
    return values
