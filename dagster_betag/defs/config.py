"""Run configuration of the assets, generated from the library's config dataclasses.

Each ``*RunConfig`` mirrors one library dataclass field for field: the same names, the
same defaults and the descriptions declared with ``knobs.knob``, so the launchpad shows
every knob with its text and there is no second field list to keep in step. A nested
dataclass (``BetagConfig.decoding``) becomes a nested config section.
"""

import dataclasses
import typing
from collections.abc import Collection
from functools import cache
from typing import Any

from dagster import Config
from pydantic import Field, create_model

from dagster_betag.defs import keys
from dagster_betag.evaluation.runner import EvaluationConfig
from dagster_betag.knobs import description_of
from dagster_betag.llm.base_tags import BaseTagConfig
from dagster_betag.llm.betag import BetagConfig
from dagster_betag.llm.finetune import LoraConfig, WindowConfig
from dagster_betag.llm.variants import ABLATION_NAMES
from dagster_betag.llm.vocabulary import VocabularyConfig
from dagster_betag.profiles import PROFILES, QUICK_PROFILE_ITEMS


def run_config_class(dataclass_type: type, name: str | None = None, extra: dict[str, Any] | None = None) -> type[Config]:
    """The Dagster config class of ``dataclass_type`` (``VocabularyConfig`` ->
    ``VocabularyRunConfig``), with ``extra`` fields of the asset's own before the library's."""
    name = name or dataclass_type.__name__.removesuffix("Config") + "RunConfig"
    return create_model(name, __base__=Config, **(extra or {}), **_fields(dataclass_type))


@cache
def _section(dataclass_type: type) -> type[Config]:
    """A nested config section: one class per dataclass, shared by every config that nests it."""
    return run_config_class(dataclass_type)


def _fields(dataclass_type: type) -> dict[str, Any]:
    hints = typing.get_type_hints(dataclass_type)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(dataclass_type):
        annotation, description = hints[field.name], description_of(field)
        if dataclasses.is_dataclass(annotation):
            section = _section(annotation)
            fields[field.name] = (section, Field(default_factory=section, description=description))
        elif typing.get_origin(annotation) is tuple:  # Dagster config has lists, not tuples
            item = typing.get_args(annotation)[0]
            fields[field.name] = (list[item], Field(default=list(field.default), description=description))
        else:
            fields[field.name] = (annotation, Field(default=field.default, description=description))
    return fields


def to_dataclass(config: Config, dataclass_type: type):
    """The library dataclass holding the values of ``config`` (its mirror, nested sections included)."""
    hints = typing.get_type_hints(dataclass_type)
    values = {}
    for field in dataclasses.fields(dataclass_type):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(hints[field.name]):
            value = to_dataclass(value, hints[field.name])
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return dataclass_type(**values)


# which items the generation assets cover: a knob of the assets, not of any library stage
SCOPE_FIELDS: dict[str, Any] = {
    "max_items": (
        int | None,
        Field(default=QUICK_PROFILE_ITEMS, description="Most popular k-core items to tag; null = all (full profile)."),
    ),
    "shard_size": (int, Field(default=64, description="Items per Parquet shard: a crash loses at most one shard.")),
}


# which Table 3 variants the BETag asset writes besides the BETags, and how
ABLATION_FIELDS: dict[str, Any] = {
    "ablations": (
        list[str],
        Field(
            default=list(ABLATION_NAMES),
            description=f"Table 3 ablations written after the BETags: {', '.join(ABLATION_NAMES)} ([] = none).",
        ),
    ),
    "one_beam_from_first_group": (
        bool,
        Field(
            default=True,
            description=(
                "The one-beam ablations (one_beam, neither) are read off group 0 of the same model's diverse decode "
                "in this run (no diversity penalty reaches group 0, so it is their greedy beam) instead of being "
                "decoded again; needs decoding.beams_per_group = 1, else they are decoded."
            ),
        ),
    ),
}

# one config class per asset, named after the asset
BaseTagsRunConfig = run_config_class(BaseTagConfig, "BaseTagsRunConfig", SCOPE_FIELDS)
TagVocabularyRunConfig = run_config_class(VocabularyConfig, "TagVocabularyRunConfig")
FinetuneExamplesRunConfig = run_config_class(WindowConfig, "FinetuneExamplesRunConfig")
BehaviorAdapterRunConfig = run_config_class(LoraConfig, "BehaviorAdapterRunConfig")
BetagsRunConfig = run_config_class(BetagConfig, "BetagsRunConfig", {**SCOPE_FIELDS, **ABLATION_FIELDS})
EvaluationRunConfig = run_config_class(EvaluationConfig, "EvaluationRunConfig")


def profile_run_config(profile: str, ablations: bool | None = None, ops: Collection[str] | None = None) -> dict:
    """Run config that scopes the LLM assets and the evaluation to a profile; ``ablations``
    overrides whether the profile decodes the Table 3 ablations; ``ops`` keeps the config of
    those steps only (a job that runs a subset of the assets)."""
    chosen = PROFILES[profile]
    scope = {"max_items": chosen["max_items"]}
    variants = chosen["ablations"] if ablations is None else (list(ABLATION_NAMES) if ablations else [])
    configs = {
        keys.BASE_TAGS: scope,
        keys.FINETUNE_EXAMPLES: {"max_examples": chosen["max_examples"]},
        keys.BETAGS: {**scope, "ablations": variants},
        keys.EVAL_RESULTS_SHARDS: {"seeds": chosen["seeds"]},
    }
    chosen_ops = {keys.op_name(key): {"config": config} for key, config in configs.items()}
    return {"ops": {name: config for name, config in chosen_ops.items() if ops is None or name in ops}}
