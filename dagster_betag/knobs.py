"""Config fields that carry their description (library code, no Dagster).

A knob is declared once, in the library's config dataclass, with its default and its
description; the Dagster run config, the launchpad and the CLI read both from there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

DESCRIPTION = "description"


def knob(default: Any, description: str) -> Any:
    """A dataclass field with ``default`` and the one text that explains it."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("a knob's default must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={DESCRIPTION: description})


def nested(factory: type, description: str) -> Any:
    """A dataclass field holding another config dataclass (its defaults), with a description."""
    return dataclasses.field(default_factory=factory, metadata={DESCRIPTION: description})


def description_of(field: dataclasses.Field) -> str | None:
    return field.metadata.get(DESCRIPTION)


def knob_description(config_type: type, name: str) -> str:
    """The description of ``config_type``'s knob ``name``."""
    field = next(f for f in dataclasses.fields(config_type) if f.name == name)
    return description_of(field) or ""
