"""The LLM stages: base tags, finetuning examples, the behavior adapter, BETags.

Each body reads its inputs, calls one library function and returns metadata. Outputs are
files (Parquet shards, an adapter folder) that dbt and later assets read.
"""

import json
from collections import Counter
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from dagster_betag import settings
from dagster_betag.defs.config import (
    AdapterConfig,
    BaseTagsConfig,
    BetagsConfig,
    FinetuneExamplesConfig,
    to_dataclass,
)
from dagster_betag.defs.resources import LLMResource, WarehouseResource
from dagster_betag.files import replacing
from dagster_betag.llm.base_tags import BaseTagConfig
from dagster_betag.llm.betag import ABLATIONS, FULL_BETAG, BetagConfig, BetagVariant
from dagster_betag.llm.finetune import LoraConfig, Window, WindowConfig, build_windows, config_fingerprint
from dagster_betag.llm.pipeline import base_tag_run, betag_run, finetune_run, load_adapter
from dagster_betag.llm.prompts import BASE_TAG_PROMPT_VERSION, ItemDescription
from dagster_betag.plots import markdown_image, tag_frequency_png
from dagster_betag.shards import ShardedTable
from dagster_betag.warehouse import behavior_sessions, markdown_table, popular_kcore_items

CURRENT_ADAPTER_FILE = "current_adapter.json"


def base_tag_table(warehouse: WarehouseResource, llm, generation: BaseTagConfig | None = None) -> ShardedTable:
    """The base-tag shards of this model and prompt version; with ``generation``, only those
    decoded with that configuration at the loaded precision (what a run resumes from)."""
    run_key = {"model": llm.name, "model_fingerprint": llm.fingerprint, "prompt_version": BASE_TAG_PROMPT_VERSION}
    if generation is not None:
        run_key |= {"precision": llm.precision, "generation": config_fingerprint(generation)}
    return ShardedTable(warehouse.layout.landing_dir / "base_tags", run_key)


def current_base_tags(warehouse: WarehouseResource, llm) -> dict[str, list[str]]:
    """item id -> latest base tags of this model and prompt version, whatever decoded them."""
    frame = base_tag_table(warehouse, llm).read()
    if frame is None:
        return {}
    latest = frame.sort("generated_at").unique("item_id", keep="last")
    return dict(zip(latest["item_id"].to_list(), latest["tags"].to_list()))


def tag_quality_metadata(tags_by_item: dict[str, list[str]], what: str) -> dict:
    """The figures that say whether tags are usable, and the most frequent ones (junk shows there)."""
    counts = Counter(tag for tags in tags_by_item.values() for tag in tags)
    n_items = max(1, len(tags_by_item))
    top = counts.most_common(20)
    return {
        "n_items_tagged": len(tags_by_item),
        "share_with_3_tags": round(sum(len(t) >= 3 for t in tags_by_item.values()) / n_items, 4),
        "mean_tags_per_item": round(sum(map(len, tags_by_item.values())) / n_items, 2),
        "n_distinct_tags": len(counts),
        "top_tags": MetadataValue.md(markdown_image(tag_frequency_png(top, f"most frequent {what}"), what)),
    }


@asset(
    key=AssetKey(["llm", "base_tags"]),
    deps=[AssetKey(["marts", "dim_items"]), AssetKey(["marts", "fct_item_popularity"])],
    group_name="llm",
    description="Zero-shot base tags from the item's structured description, in resumable Parquet shards.",
)
def base_tags(context: AssetExecutionContext, config: BaseTagsConfig, llm: LLMResource, warehouse: WarehouseResource):
    loaded = llm.load()
    items = [ItemDescription.from_row(row) for row in popular_kcore_items(warehouse.layout.database_path, config.max_items)]
    generation = to_dataclass(config, BaseTagConfig)
    counts = base_tag_run(
        loaded,
        items,
        base_tag_table(warehouse, loaded, generation),
        generation,
        shard_size=config.shard_size,
        log=context.log.info,
    )
    tags = current_base_tags(warehouse, loaded)
    in_scope = {item.item_id: tags.get(item.item_id, []) for item in items}
    sample = [(item.title, ", ".join(in_scope[item.item_id])) for item in items[:8]]
    return MaterializeResult(
        metadata={
            "model": loaded.name,
            "prompt_version": BASE_TAG_PROMPT_VERSION,
            "n_generated": counts.n_generated,
            "n_skipped_already_done": counts.n_skipped,
            "seconds": round(counts.seconds, 1),
            "seconds_per_item": round(counts.seconds / max(1, counts.n_generated), 3),
            **tag_quality_metadata(in_scope, "base tags"),
            "sample": MetadataValue.md(markdown_table(["title", "base tags"], sample, max_chars=120)),
        }
    )


@asset(
    key=AssetKey(["llm", "finetune_examples"]),
    deps=[AssetKey(["marts", "fct_behavior_sessions"]), AssetKey(["llm", "base_tags"])],
    group_name="llm",
    description="Next-item windows over train-only behavior sessions, items written as their base tags.",
)
def finetune_examples(context: AssetExecutionContext, config: FinetuneExamplesConfig, llm: LLMResource, warehouse: WarehouseResource):
    loaded = llm.load()
    tags = current_base_tags(warehouse, loaded)
    windows = build_windows(behavior_sessions(warehouse.layout.database_path), set(tags), to_dataclass(config, WindowConfig))
    frame = pl.DataFrame(
        {
            "example_id": [w.example_id for w in windows],
            "session_id": [w.session_id for w in windows],
            "context_item_ids": [list(w.context_item_ids) for w in windows],
            "target_item_id": [w.target_item_id for w in windows],
            "is_validation": [w.is_validation for w in windows],
        },
        schema={
            "example_id": pl.Utf8,
            "session_id": pl.Utf8,
            "context_item_ids": pl.List(pl.Utf8),
            "target_item_id": pl.Utf8,
            "is_validation": pl.Boolean,
        },
    )
    path = warehouse.layout.landing_dir / "finetune_examples.parquet"
    with replacing(path) as temporary:
        frame.write_parquet(temporary)
    return MaterializeResult(
        metadata={
            "dagster/row_count": frame.height,
            "n_validation": int(frame["is_validation"].sum()),
            "n_items_with_base_tags": len(tags),
            "path": str(path),
            "preview": MetadataValue.md(markdown_table(frame.columns, frame.head(5).rows())),
        }
    )


@asset(
    key=AssetKey(["llm", "behavior_adapter"]),
    deps=[AssetKey(["llm", "finetune_examples"])],
    group_name="llm",
    description="LoRA adapter finetuned to predict the next item's tags; saved under models/adapters/<id>/.",
)
def behavior_adapter(context: AssetExecutionContext, config: AdapterConfig, llm: LLMResource, warehouse: WarehouseResource):
    loaded = llm.load()
    tags = current_base_tags(warehouse, loaded)
    examples_path = warehouse.layout.landing_dir / "finetune_examples.parquet"
    examples = pl.read_parquet(examples_path)
    windows = [
        Window(row["example_id"], row["session_id"], tuple(row["context_item_ids"]), row["target_item_id"], row["is_validation"])
        for row in examples.iter_rows(named=True)
    ]
    data_fingerprint = config_fingerprint(examples.hash_rows().sum(), sorted((k, tuple(v)) for k, v in tags.items()))
    artifact = finetune_run(
        loaded,
        windows,
        tags,
        to_dataclass(config, LoraConfig),
        adapters_dir=settings.adapters_dir(),
        data_fingerprint=data_fingerprint,
        log=context.log.info,
    )
    pointer = {"adapter_id": artifact.adapter_id, "folder": str(artifact.folder)}
    with replacing(warehouse.layout.landing_dir / CURRENT_ADAPTER_FILE) as temporary:
        temporary.write_text(json.dumps(pointer) + "\n")
    manifest = artifact.manifest
    return MaterializeResult(
        metadata={
            "adapter_id": artifact.adapter_id,
            "folder": str(artifact.folder),
            "reused_existing_adapter": artifact.reused,
            "n_train_examples": manifest["n_train_examples"],
            "validation_loss_before": manifest["validation_loss_before"],
            "validation_loss_after": manifest["validation_loss_after"],
            "train_loss_first_step": manifest["train_loss_first_step"],
            "train_loss_last_step": manifest["train_loss_last_step"],
            "seconds": manifest["seconds"],
            "loss_curve": MetadataValue.md(markdown_image(artifact.loss_png, "loss curve")),
        }
    )


def betag_scope(warehouse: WarehouseResource, base, max_items: int | None) -> dict[str, list[str]]:
    """item id -> base tags, for the (most popular first) k-core items in scope that have them."""
    tags = current_base_tags(warehouse, base)
    scope = [row["item_id"] for row in popular_kcore_items(warehouse.layout.database_path, max_items)]
    return {item_id: tags[item_id] for item_id in scope if item_id in tags}


def generate_variant(
    context: AssetExecutionContext, variant: BetagVariant, config: BetagsConfig, llm: LLMResource, warehouse: WarehouseResource
) -> tuple[dict, dict[str, list[str]], dict[str, list[str]]]:
    """Decode ``variant`` for the items in scope into the BETag shards.

    Returns (metadata, item -> base tags, item -> aggregated tags)."""
    base = llm.load()
    items = betag_scope(warehouse, base, config.max_items)
    if variant.finetuned:
        pointer = json.loads((warehouse.layout.landing_dir / CURRENT_ADAPTER_FILE).read_text())
        adapter_id, model = pointer["adapter_id"], load_adapter(base, Path(pointer["folder"]))
    else:
        adapter_id, model = "none", base
    betag_config = variant.decoding_config(to_dataclass(config, BetagConfig))
    table = ShardedTable(
        warehouse.layout.landing_dir / "betags",
        {
            "variant": variant.name,
            "adapter_id": adapter_id,
            "model": base.name,
            "precision": base.precision,
            "decoding": config_fingerprint(betag_config),
        },
    )
    context.log.info(f"BETag variant {variant.name}: {betag_config.num_groups} group(s), adapter {adapter_id}")
    counts = betag_run(model, items, table, betag_config, shard_size=config.shard_size, log=context.log.info)
    latest = table.read().sort("generated_at").unique("item_id", keep="last").filter(pl.col("item_id").is_in(list(items)))
    tagged = {row["item_id"]: [t["tag"] for t in row["tags"]] for row in latest.iter_rows(named=True)}
    metadata = {
        "adapter_id": adapter_id,
        "n_generated": counts.n_generated,
        "n_skipped_already_done": counts.n_skipped,
        "seconds": round(counts.seconds, 1),
        "seconds_per_item": round(counts.seconds / max(1, counts.n_generated), 3),
    }
    return metadata, items, tagged


@asset(
    key=AssetKey(["llm", "betags"]),
    deps=[AssetKey(["llm", "behavior_adapter"]), AssetKey(["llm", "base_tags"])],
    group_name="llm",
    description=(
        "BETags: diverse beams of the finetuned model prompted with each item's base tags, aggregated; "
        "then the configured ablations of the poster's Table 3 (no_finetune, one_beam, neither)."
    ),
)
def betags(context: AssetExecutionContext, config: BetagsConfig, llm: LLMResource, warehouse: WarehouseResource):
    metadata, base_tags_of, tagged = generate_variant(context, FULL_BETAG, config, llm, warehouse)
    sample = [
        (row["title"], ", ".join(base_tags_of.get(row["item_id"], [])), ", ".join(tagged.get(row["item_id"], [])))
        for row in popular_kcore_items(warehouse.layout.database_path, 8)
    ]
    for variant in (v for v in ABLATIONS if v.name in config.ablations):
        variant_metadata, _, variant_tagged = generate_variant(context, variant, config, llm, warehouse)
        quality = tag_quality_metadata(variant_tagged, variant.name)
        metadata |= {
            f"{variant.name}/{key}": value
            for key, value in {**variant_metadata, **quality}.items()
            if not isinstance(value, MetadataValue)
        }
    return MaterializeResult(
        metadata={
            **metadata,
            **tag_quality_metadata(tagged, "BETags"),
            "sample": MetadataValue.md(markdown_table(["title", "base tags", "BETags"], sample, max_chars=120)),
        }
    )
