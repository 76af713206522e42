"""Run configuration of the LLM assets, derived from the library's config dataclasses.

The Dagster launchpad shows every knob of BaseTagConfig, LoraConfig, ... with its default,
without a second copy of the field list to keep in step.
"""

import dataclasses
import typing
from typing import Any

from dagster import Config
from pydantic import Field, create_model

from dagster_betag.llm.base_tags import BaseTagConfig
from dagster_betag.llm.betag import BetagConfig
from dagster_betag.llm.finetune import LoraConfig, WindowConfig
from dagster_betag.profiles import PROFILES, QUICK_PROFILE_ITEMS



def _config_fields(dataclass_type: type) -> dict[str, Any]:
    hints = typing.get_type_hints(dataclass_type)
    fields = {}
    for field in dataclasses.fields(dataclass_type):
        annotation = hints[field.name]
        default = field.default
        if typing.get_origin(annotation) is tuple:  # Dagster config has lists, not tuples
            annotation, default = list[str], list(default)
        fields[field.name] = (annotation, Field(default=default))
    return fields


SCOPE_FIELDS: dict[str, Any] = {
    "max_items": (
        int | None,
        Field(default=QUICK_PROFILE_ITEMS, description="Most popular k-core items to tag; null = all (full profile)."),
    ),
    "shard_size": (int, Field(default=64, description="Items per Parquet shard: a crash loses at most one shard.")),
}

BaseTagsConfig = create_model("BaseTagsConfig", __base__=Config, **SCOPE_FIELDS, **_config_fields(BaseTagConfig))
FinetuneExamplesConfig = create_model("FinetuneExamplesConfig", __base__=Config, **_config_fields(WindowConfig))
AdapterConfig = create_model("AdapterConfig", __base__=Config, **_config_fields(LoraConfig))
BetagsConfig = create_model("BetagsConfig", __base__=Config, **SCOPE_FIELDS, **_config_fields(BetagConfig))


def to_dataclass(config: Config, dataclass_type: type):
    """The library dataclass holding the values of ``config``."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(dataclass_type)}
    return dataclass_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def profile_run_config(profile: str) -> dict:
    """Run config that scopes the LLM assets to a profile."""
    scope = {"max_items": PROFILES[profile]["max_items"]}
    return {
        "ops": {
            "llm__base_tags": {"config": scope},
            "llm__finetune_examples": {"config": {"max_examples": PROFILES[profile]["max_examples"]}},
            "llm__betags": {"config": scope},
        }
    }
