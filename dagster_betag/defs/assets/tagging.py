"""The LLM stages: base tags, finetuning examples, the behavior adapter, BETags.

Each body reads its inputs, calls one library function and returns metadata. Outputs are
files (Parquet shards, an adapter folder) that dbt and later assets read.
"""

import json
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, AssetKey, BackfillPolicy, MaterializeResult, MetadataValue, asset

from dagster_betag import settings
from dagster_betag.defs.config import (
    AdapterConfig,
    BaseTagsConfig,
    BetagsConfig,
    FinetuneExamplesConfig,
    TagVocabularyConfig,
    to_dataclass,
)
from dagster_betag.defs.partitions import item_shards
from dagster_betag.defs.resources import LLMResource, WarehouseResource
from dagster_betag.files import replacing
from dagster_betag.hashing import stable_hash
from dagster_betag.llm.api import ApiTagger
from dagster_betag.llm.base_tags import BaseTagConfig
from dagster_betag.llm.betag import BetagConfig, variant_decoding
from dagster_betag.llm.behavior import BEHAVIOR_PROMPT_VERSION
from dagster_betag.llm.finetune import LoraConfig, Window, WindowConfig, build_windows
from dagster_betag.llm.pipeline import base_tag_run, betag_run, finetune_run, load_adapter
from dagster_betag.llm.prompts import (
    BASE_TAG_PROMPT_VERSION,
    DEFAULT_FEW_SHOT,
    ItemDescription,
    catalog_few_shot,
    instruction_texts,
)
from dagster_betag.llm.behavior import INSTRUCTION
from dagster_betag.llm.variants import ABLATIONS, FULL_BETAG, BetagVariant
from dagster_betag.llm.vocabulary import TagMap, VocabularyConfig, build_tag_map
from dagster_betag.plots import markdown_image, tag_frequency_png
from dagster_betag.refresh import CURRENT_ADAPTER_FILE, current_adapter, train_interaction_count
from dagster_betag.shards import RunCounts, ShardedTable, item_shard_of
from dagster_betag.warehouse import (
    behavior_sessions,
    markdown_table,
    natively_tagged_items,
    popular_kcore_items,
    session_recency,
    tagging_scope,
)



def base_tag_table(warehouse: WarehouseResource, llm, generation: BaseTagConfig | None = None) -> ShardedTable:
    """The base-tag shards of this model and prompt version; with ``generation``, only those
    decoded with that configuration at the loaded precision (what a run resumes from)."""
    run_key = {"model": llm.name, "model_fingerprint": llm.fingerprint, "prompt_version": BASE_TAG_PROMPT_VERSION}
    if generation is not None:
        run_key |= {"precision": llm.precision, "generation": stable_hash(generation, length=12)}
    return ShardedTable(warehouse.layout.landing_dir / "base_tags", run_key, version_column="input_hash")


def current_base_tags(warehouse: WarehouseResource, llm) -> dict[str, list[str]]:
    """item id -> latest published base tags of this model and prompt version, whatever decoded them."""
    frame = base_tag_table(warehouse, llm).read(published_only=True)
    if frame is None:
        return {}
    latest = frame.sort("generated_at").unique("item_id", keep="last")
    return dict(zip(latest["item_id"].to_list(), latest["tags"].to_list()))


def tag_map_path(warehouse: WarehouseResource) -> Path:
    return warehouse.layout.landing_dir / "tag_vocabulary" / "tag_vocabulary.parquet"


# what the models are told, whose words make the echo filter of the tag vocabulary
PROMPT_INSTRUCTIONS = (INSTRUCTION, *instruction_texts())


def load_tag_map(warehouse: WarehouseResource) -> tuple[TagMap, str | None]:
    """The stored tag vocabulary and its config id (an empty map, which changes nothing, before
    llm/tag_vocabulary first ran)."""
    return TagMap.read(tag_map_path(warehouse), PROMPT_INSTRUCTIONS)


def canonical_base_tags(warehouse: WarehouseResource, llm) -> dict[str, list[str]]:
    """``current_base_tags`` through the tag vocabulary: canonical tags, junk dropped."""
    tag_map, _ = load_tag_map(warehouse)
    return {item_id: tag_map.apply(tags) for item_id, tags in current_base_tags(warehouse, llm).items()}


def api_cache_dir(warehouse: WarehouseResource) -> Path:
    return warehouse.layout.directory / "cache" / "api"


def in_item_shard(item_ids, item_shard: str) -> set[str]:
    n_shards = len(item_shards.get_partition_keys())
    return {item_id for item_id in item_ids if item_shard_of(item_id, n_shards) == item_shard}


def run_counts_metadata(counts: RunCounts) -> dict:
    return {
        "n_generated": counts.n_generated,
        "n_new": counts.n_generated - counts.n_changed,
        "n_changed": counts.n_changed,
        "n_skipped_already_done": counts.n_skipped,
        "seconds": round(counts.seconds, 1),
        "seconds_per_item": round(counts.seconds / max(1, counts.n_generated), 3),
    }


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
    partitions_def=item_shards,
    backfill_policy=BackfillPolicy.single_run(),
    description=(
        "Zero-shot base tags from the item's structured description, in resumable Parquet shards; "
        "partitioned by item shard, and only new items or items whose description changed are tagged."
    ),
)
def base_tags(context: AssetExecutionContext, config: BaseTagsConfig, llm: LLMResource, warehouse: WarehouseResource):
    tagger = llm.base_tagger(api_cache_dir(warehouse))
    items = [ItemDescription.from_row(row) for row in tagging_scope(warehouse.layout.database_path, config.max_items)]
    generation = to_dataclass(config, BaseTagConfig)
    table = base_tag_table(warehouse, tagger, generation)
    few_shot = DEFAULT_FEW_SHOT
    if generation.few_shot == "catalog":
        rows = natively_tagged_items(warehouse.layout.database_path, n=3, min_tags=generation.num_tags)
        few_shot = catalog_few_shot(rows, generation.num_tags) or DEFAULT_FEW_SHOT
        context.log.info(f"few-shot examples from the catalog: {', '.join(item.title for item, _ in few_shot)}")
    counts = RunCounts(0, 0, 0, 0.0)
    for item_shard in context.partition_keys:
        with warehouse.writing(f"base_tags-{item_shard}", context.log.info):
            counts += base_tag_run(
                tagger,
                items,
                table.for_item_shard(item_shard),
                generation,
                shard_size=config.shard_size,
                log=context.log.info,
                only=in_item_shard((item.item_id for item in items), item_shard),
                few_shot=few_shot,
            )
    tags = current_base_tags(warehouse, tagger)
    in_scope = {item.item_id: tags.get(item.item_id, []) for item in items}
    sample = [(item.title, ", ".join(in_scope[item.item_id])) for item in items[:8]]
    return MaterializeResult(
        metadata={
            "model": tagger.name,
            "prompt_version": BASE_TAG_PROMPT_VERSION,
            "item_shards": ", ".join(context.partition_keys),
            **run_counts_metadata(counts),
            # requests, retries, cache hits and back-off of an API tagger
            **({f"api_{k}": v for k, v in asdict(tagger.stats).items()} if isinstance(tagger, ApiTagger) else {}),
            **tag_quality_metadata(in_scope, "base tags"),
            "sample": MetadataValue.md(markdown_table(["title", "base tags"], sample, max_chars=120)),
        }
    )


@asset(
    key=AssetKey(["llm", "tag_vocabulary"]),
    deps=[AssetKey(["llm", "base_tags"])],
    group_name="llm",
    description=(
        "The canonical tag vocabulary: spelling variants unified, instruction echoes and tags on too many items "
        "dropped, near-duplicates merged by MiniLM similarity (most frequent first). Built once, then extended "
        "with the tags of new items, so existing items keep their canonical tags."
    ),
)
def tag_vocabulary(
    context: AssetExecutionContext, config: TagVocabularyConfig, llm: LLMResource, warehouse: WarehouseResource
):
    from dagster_betag.evaluation.text_encoder import TextEncoder

    raw = current_base_tags(warehouse, llm.base_tagger(api_cache_dir(warehouse)))
    vocabulary_config = to_dataclass(config, VocabularyConfig)
    config_id = stable_hash(vocabulary_config, length=12)
    stored, stored_config_id = load_tag_map(warehouse)
    # the encoder loads only when a merge runs (a refresh without new tags needs none)
    encode = (lambda texts: TextEncoder().encode(texts)) if vocabulary_config.merge_threshold is not None else None
    if stored_config_id == config_id:
        tag_map = stored.extended(raw, vocabulary_config, encode)
    else:
        tag_map = build_tag_map(raw, vocabulary_config, encode, instructions=PROMPT_INSTRUCTIONS)
    path = tag_map_path(warehouse)
    with replacing(path) as temporary:
        tag_map.write(temporary, config_id)
    canonical = {item_id: tag_map.apply(tags) for item_id, tags in raw.items()}
    reasons = Counter(mapping.reason for mapping in tag_map.mappings.values())
    merges = sorted((m for m in tag_map.mappings.values() if m.reason != "kept"), key=lambda m: -m.n_items)[:15]
    before, after = tag_quality_metadata(raw, "raw base tags"), tag_quality_metadata(canonical, "canonical base tags")
    return MaterializeResult(
        metadata={
            "path": str(path),
            "vocabulary_id": tag_map.vocabulary_id(),
            "rebuilt": stored_config_id != config_id,
            **{f"n_raw_tags_{reason}": n for reason, n in sorted(reasons.items())},
            "n_distinct_before": before["n_distinct_tags"],
            "n_distinct_after": after["n_distinct_tags"],
            "mean_tags_per_item_before": before["mean_tags_per_item"],
            "mean_tags_per_item_after": after["mean_tags_per_item"],
            "top_tags": after["top_tags"],
            "largest_changes": MetadataValue.md(
                markdown_table(
                    ["raw tag", "canonical tag", "why", "cosine", "items"],
                    [
                        (m.raw_tag, m.canonical_tag or "(dropped)", m.reason, round(m.similarity, 3), m.n_items)
                        for m in merges
                    ],
                )
            ),
        }
    )


@asset(
    key=AssetKey(["llm", "finetune_examples"]),
    deps=[AssetKey(["marts", "fct_behavior_sessions"]), AssetKey(["llm", "tag_vocabulary"])],
    group_name="llm",
    description="Next-item windows over train-only behavior sessions, items written as their base tags.",
)
def finetune_examples(context: AssetExecutionContext, config: FinetuneExamplesConfig, llm: LLMResource, warehouse: WarehouseResource):
    tags = canonical_base_tags(warehouse, llm.base_tagger(api_cache_dir(warehouse)))
    database = warehouse.layout.database_path
    tagged = {item_id for item_id, item_tags in tags.items() if item_tags}
    windows = build_windows(
        behavior_sessions(database), tagged, to_dataclass(config, WindowConfig), session_recency(database)
    )
    frame = pl.DataFrame(
        {
            "example_id": [w.example_id for w in windows],
            "session_id": [w.session_id for w in windows],
            "context_item_ids": [list(w.context_item_ids) for w in windows],
            "target_item_id": [w.target_item_id for w in windows],
            "is_validation": [w.is_validation for w in windows],
            "later_item_ids": [list(w.later_item_ids) for w in windows],
        },
        schema={
            "example_id": pl.Utf8,
            "session_id": pl.Utf8,
            "context_item_ids": pl.List(pl.Utf8),
            "target_item_id": pl.Utf8,
            "is_validation": pl.Boolean,
            "later_item_ids": pl.List(pl.Utf8),
        },
    )
    path = warehouse.layout.landing_dir / "finetune_examples.parquet"
    with replacing(path) as temporary:
        frame.write_parquet(temporary)
    return MaterializeResult(
        metadata={
            "dagster/row_count": frame.height,
            "n_validation": int(frame["is_validation"].sum()),
            "n_one_item_windows": int((frame["context_item_ids"].list.len() == 1).sum()),
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
    tags = canonical_base_tags(warehouse, llm.base_tagger(api_cache_dir(warehouse), loaded))
    examples_path = warehouse.layout.landing_dir / "finetune_examples.parquet"
    examples = pl.read_parquet(examples_path)
    windows = [
        Window(
            row["example_id"],
            row["session_id"],
            tuple(row["context_item_ids"]),
            row["target_item_id"],
            row["is_validation"],
            tuple(row.get("later_item_ids") or ()),
        )
        for row in examples.iter_rows(named=True)
    ]
    data_fingerprint = stable_hash(int(examples.hash_rows().sum()), sorted((k, tuple(v)) for k, v in tags.items()), length=12)
    artifact = finetune_run(
        loaded,
        windows,
        tags,
        to_dataclass(config, LoraConfig),
        adapters_dir=settings.adapters_dir(),
        data_fingerprint=data_fingerprint,
        log=context.log.info,
    )
    pointer = {
        "adapter_id": artifact.adapter_id,
        "folder": str(artifact.folder),
        # the weekly re-finetune schedule compares this with the behavior that arrived since
        "n_train_interactions": train_interaction_count(warehouse.layout),
    }
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


def betag_scope(
    warehouse: WarehouseResource, base_tagger, tag_map: TagMap, max_items: int | None
) -> dict[str, list[str]]:
    """item id -> canonical base tags, for the items in scope (most popular k-core first, then
    new arrivals) that have base tags."""
    raw = current_base_tags(warehouse, base_tagger)
    scope = [row["item_id"] for row in tagging_scope(warehouse.layout.database_path, max_items)]
    # an item whose base tags were all junk is still prompted with them: its beams are canonicalized
    return {item_id: tag_map.apply(raw[item_id]) or raw[item_id] for item_id in scope if item_id in raw}


def generate_variant(
    context: AssetExecutionContext, variant: BetagVariant, config: BetagsConfig, llm: LLMResource, warehouse: WarehouseResource
) -> tuple[dict, dict[str, list[str]], dict[str, list[str]]]:
    """Decode ``variant`` for the items in scope of the run's item shards into the BETag shards.

    Returns (metadata, item -> base tags, item -> aggregated tags)."""
    base = llm.load()
    tag_map, _ = load_tag_map(warehouse)
    items = betag_scope(warehouse, llm.base_tagger(api_cache_dir(warehouse), base), tag_map, config.max_items)
    if variant.finetuned:
        pointer = current_adapter(warehouse.layout)
        if pointer is None:
            raise FileNotFoundError(
                f"no behavior adapter in {warehouse.layout.directory}: materialize llm/behavior_adapter "
                "(the betag_pipeline job or `betag run`) before refreshing BETags"
            )
        adapter_id, model = pointer["adapter_id"], load_adapter(base, Path(pointer["folder"]))
    else:
        adapter_id, model = "none", base
    full_config = to_dataclass(config, BetagConfig)
    betag_config = replace(full_config, decoding=variant_decoding(variant, full_config.decoding))
    table = ShardedTable(
        warehouse.layout.landing_dir / "betags",
        {
            "variant": variant.name,
            "adapter_id": adapter_id,
            "model": base.name,
            "precision": base.precision,
            "prompt_version": BEHAVIOR_PROMPT_VERSION,
            "decoding": stable_hash(betag_config, length=12),
            "vocabulary_id": tag_map.vocabulary_id(),
        },
        version_column="input_hash",
    )
    context.log.info(f"BETag variant {variant.name}: {betag_config.decoding.num_groups} group(s), adapter {adapter_id}")
    counts = RunCounts(0, 0, 0, 0.0)
    for item_shard in context.partition_keys:
        members = in_item_shard(items, item_shard)
        with warehouse.writing(f"betags-{item_shard}", context.log.info):
            counts += betag_run(
                model,
                {item_id: tags for item_id, tags in items.items() if item_id in members},
                table.for_item_shard(item_shard),
                betag_config,
                shard_size=config.shard_size,
                log=context.log.info,
                tag_map=tag_map,
            )
    latest = table.read().sort("generated_at").unique("item_id", keep="last").filter(pl.col("item_id").is_in(list(items)))
    tagged = {row["item_id"]: [t["tag"] for t in row["tags"]] for row in latest.iter_rows(named=True)}
    return {"adapter_id": adapter_id, **run_counts_metadata(counts)}, items, tagged


@asset(
    key=AssetKey(["llm", "betags"]),
    deps=[AssetKey(["llm", "behavior_adapter"]), AssetKey(["llm", "base_tags"])],
    group_name="llm",
    partitions_def=item_shards,
    backfill_policy=BackfillPolicy.single_run(),
    description=(
        "BETags: diverse beams of the finetuned model prompted with each item's base tags, aggregated; "
        "then the configured ablations of the poster's Table 3 (no_finetune, one_beam, neither). "
        "Partitioned by item shard; items whose base tags and adapter are unchanged are not decoded again."
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
