"""Run configuration of the LLM assets, derived from the library's config dataclasses.

The Dagster launchpad shows every knob of BaseTagConfig, LoraConfig, ... with its default,
without a second copy of the field list to keep in step.
"""

import dataclasses
import typing
from collections.abc import Collection
from typing import Any

from dagster import Config
from pydantic import Field, create_model

from dagster_betag.evaluation.retrieval import RetrievalConfig
from dagster_betag.evaluation.runner import EvaluationConfig
from dagster_betag.llm.base_tags import BaseTagConfig
from dagster_betag.llm.betag import BetagConfig
from dagster_betag.llm.decoding import DiverseBeamConfig
from dagster_betag.llm.finetune import LoraConfig, WindowConfig
from dagster_betag.llm.variants import ABLATIONS
from dagster_betag.llm.vocabulary import VocabularyConfig
from dagster_betag.profiles import ALL_ABLATIONS, PROFILES, QUICK_PROFILE_ITEMS



def _config_fields(dataclass_type: type) -> dict[str, Any]:
    """Every scalar or tuple field of the dataclass (nested dataclasses are flattened by the caller)."""
    hints = typing.get_type_hints(dataclass_type)
    fields = {}
    for field in dataclasses.fields(dataclass_type):
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            continue
        default = field.default
        if typing.get_origin(annotation) is tuple:  # Dagster config has lists, not tuples
            annotation, default = list[typing.get_args(annotation)[0]], list(default)
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
TagVocabularyConfig = create_model("TagVocabularyConfig", __base__=Config, **_config_fields(VocabularyConfig))
FinetuneExamplesConfig = create_model("FinetuneExamplesConfig", __base__=Config, **_config_fields(WindowConfig))
AdapterConfig = create_model("AdapterConfig", __base__=Config, **_config_fields(LoraConfig))
BetagsConfig = create_model(
    "BetagsConfig",
    __base__=Config,
    **SCOPE_FIELDS,
    **_config_fields(BetagConfig),
    **_config_fields(DiverseBeamConfig),  # BetagConfig.decoding, flattened
    ablations=(
        list[str],
        Field(
            default=[variant.name for variant in ABLATIONS],
            description="Table 3 ablations decoded after the BETags: no_finetune, one_beam, neither ([] = none).",
        ),
    ),
)


EvaluationRunConfig = create_model(
    "EvaluationRunConfig", __base__=Config, **_config_fields(EvaluationConfig), **_config_fields(RetrievalConfig)
)


def to_dataclass(config: Config, dataclass_type: type):
    """The library dataclass holding the values of ``config`` (nested dataclass fields are
    filled from the same flat config)."""
    hints = typing.get_type_hints(dataclass_type)
    values = {}
    for field in dataclasses.fields(dataclass_type):
        if dataclasses.is_dataclass(hints[field.name]):
            values[field.name] = to_dataclass(config, hints[field.name])
        else:
            value = getattr(config, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return dataclass_type(**values)


def profile_run_config(profile: str, ablations: bool | None = None, ops: Collection[str] | None = None) -> dict:
    """Run config that scopes the LLM assets and the evaluation to a profile; ``ablations``
    overrides whether the profile decodes the Table 3 ablations; ``ops`` keeps the config of
    those steps only (a job that runs a subset of the assets)."""
    chosen = PROFILES[profile]
    scope = {"max_items": chosen["max_items"]}
    variants = chosen["ablations"] if ablations is None else (ALL_ABLATIONS if ablations else [])
    configs = {
        "llm__base_tags": {"config": scope},
        "llm__finetune_examples": {"config": {"max_examples": chosen["max_examples"]}},
        "llm__betags": {"config": {**scope, "ablations": variants}},
        "evaluation__eval_results": {"config": {"seeds": chosen["seeds"]}},
    }
    return {"ops": {name: config for name, config in configs.items() if ops is None or name in ops}}
