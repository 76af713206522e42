"""The LLM stages: base tags, the tag vocabulary, finetuning examples, the behavior adapter,
BETags.

Each body reads its inputs, calls one library function and returns metadata. Outputs are
files (Parquet shards, an adapter folder) that dbt and later assets read; what a stage reads
of an earlier one is a warehouse table (``tag_store``). The two generation assets are
partitioned by item shard, so they are built by ``item_shard_assets`` once the number of
shards is known.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    StaticPartitionsDefinition,
    asset,
)

from dagster_betag import settings, tag_store
from dagster_betag.defs import keys
from dagster_betag.defs.config import (
    BaseTagsRunConfig,
    BehaviorAdapterRunConfig,
    BetagsRunConfig,
    FinetuneExamplesRunConfig,
    TagVocabularyRunConfig,
    to_dataclass,
)
from dagster_betag.defs.metadata import (
    epochs_metadata,
    fit_metadata,
    plain_values,
    run_counts_metadata,
    tag_quality_metadata,
)
from dagster_betag.defs.resources import LLMResource, WarehouseResource
from dagster_betag.hashing import stable_hash
from dagster_betag.llm.api import ApiTagger
from dagster_betag.llm.base_tags import BaseTagConfig
from dagster_betag.llm.betag import BetagConfig, variant_decoding
from dagster_betag.llm.behavior import item_writing_named
from dagster_betag.llm.finetune import LoraConfig, Window, WindowConfig, build_windows
from dagster_betag.llm.fit import measure_fit
from dagster_betag.llm.pipeline import base_tag_run, betag_run, finetune_run, load_adapter
from dagster_betag.llm.prompts import BASE_TAG_PROMPT_VERSION, DEFAULT_FEW_SHOT, ItemDescription, catalog_few_shot
from dagster_betag.llm.variants import ABLATIONS, FULL_BETAG, BetagVariant, diverse_twin, variant_named
from dagster_betag.llm.vocabulary import VocabularyConfig, build_tag_map
from dagster_betag.plots import markdown_image
from dagster_betag.refresh import ADAPTER_LEARNABLE_COUNT, learnable_interaction_count
from dagster_betag.shards import RunCounts, ShardedTable, item_shard_of
from dagster_betag.warehouse import (
    WarehouseLayout,
    behavior_sessions,
    item_titles,
    markdown_table,
    natively_tagged_items,
    popular_kcore_items,
    session_recency,
    tagging_scope,
)

CANONICAL_BASE_TAGS = keys.model("marts", "item_base_tags")
CURRENT_RAW_BASE_TAGS = keys.model("intermediate", "int_base_tag_generations_current")


def _each_item_shard(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    partitions: StaticPartitionsDefinition,
    what: str,
    item_ids,
    run: Callable[[str, set[str]], RunCounts],
) -> RunCounts:
    """``run(item_shard, its items)`` for every item shard of this run, each under its lock."""
    n_shards = len(partitions.get_partition_keys())
    counts = RunCounts(0, 0, 0, 0.0)
    for item_shard in context.partition_keys:
        members = {item_id for item_id in item_ids if item_shard_of(item_id, n_shards) == item_shard}
        with warehouse.writing(f"{what}-{item_shard}", context.log.info):
            counts += run(item_shard, members)
    return counts


def item_shard_assets(partitions: StaticPartitionsDefinition) -> list[AssetsDefinition]:
    """The generation assets, partitioned by ``partitions`` (item shards)."""

    @asset(
        key=keys.BASE_TAGS,
        deps=[keys.model("marts", "dim_items"), keys.model("marts", "fct_item_popularity")],
        group_name="llm",
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        description=(
            "Zero-shot base tags from the item's structured description, in resumable Parquet shards; "
            "partitioned by item shard, and only new items or items whose description changed are tagged."
        ),
    )
    def base_tags(context: AssetExecutionContext, config: BaseTagsRunConfig, llm: LLMResource, warehouse: WarehouseResource):
        layout = warehouse.layout
        tagger = llm.base_tagger(tag_store.api_cache_dir(layout))
        items = [ItemDescription.from_row(row) for row in tagging_scope(layout.database_path, config.max_items)]
        generation = to_dataclass(config, BaseTagConfig)
        table = tag_store.base_tag_table(layout, tagger, generation)
        few_shot = DEFAULT_FEW_SHOT
        if generation.few_shot == "catalog":
            rows = natively_tagged_items(layout.database_path, n=3, min_tags=generation.num_tags)
            few_shot = catalog_few_shot(rows, generation.num_tags) or DEFAULT_FEW_SHOT
            context.log.info(f"few-shot examples from the catalog: {', '.join(item.title for item, _ in few_shot)}")
        counts = _each_item_shard(
            context,
            warehouse,
            partitions,
            "base_tags",
            [item.item_id for item in items],
            lambda item_shard, members: base_tag_run(
                tagger,
                items,
                table.for_item_shard(item_shard),
                generation,
                shard_size=config.shard_size,
                log=context.log.info,
                only=members,
                few_shot=few_shot,
            ),
        )
        written = tag_store.latest_by_item(table)
        in_scope = {item.item_id: written.get(item.item_id, []) for item in items}
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
        key=keys.BETAGS,
        deps=[keys.BEHAVIOR_ADAPTER, CANONICAL_BASE_TAGS],
        group_name="llm",
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        description=(
            "BETags: diverse beams of the finetuned model prompted with each item's base tags, aggregated; "
            f"then the configured ablations of the poster's Table 3 ({', '.join(v.name for v in ABLATIONS)}). "
            "Partitioned by item shard; items whose base tags and adapter are unchanged are not decoded again. "
            "Why each BETag: marts.item_tag_evidence (built after this asset, with the most popular items' evidence "
            "in its metadata)."
        ),
    )
    def betags(context: AssetExecutionContext, config: BetagsRunConfig, llm: LLMResource, warehouse: WarehouseResource):
        layout = warehouse.layout
        scope = [row["item_id"] for row in tagging_scope(layout.database_path, config.max_items)]
        prompts = tag_store.base_tags_to_prompt(layout)
        items = {item_id: prompts[item_id] for item_id in scope if item_id in prompts}
        full = decode_variant(context, warehouse, partitions, FULL_BETAG, config, llm, items)
        metadata, tagged = {**full.metadata, **betag_fit_metadata(layout, full, items, config)}, full.tagged
        written = {FULL_BETAG.name: full}
        chosen = {variant_named(name).name for name in config.ablations}  # an unknown name fails in one line
        for variant in (v for v in ABLATIONS if v.name in chosen):
            twin = written.get(diverse_twin(variant).name)
            # group 0 is the one-beam decode only when a group holds one beam
            derive = config.one_beam_from_first_group and not variant.multi_beam and config.decoding.beams_per_group == 1
            written[variant.name] = decoded = decode_variant(
                context, warehouse, partitions, variant, config, llm, items, first_group_of=twin if derive else None
            )
            metadata |= plain_values(
                {**decoded.metadata, **tag_quality_metadata(decoded.tagged, variant.name)}, variant.name
            )
        sample = [
            (row["title"], ", ".join(items.get(row["item_id"], [])), ", ".join(tagged.get(row["item_id"], [])))
            for row in popular_kcore_items(layout.database_path, 8)
        ]
        return MaterializeResult(
            metadata={
                **metadata,
                **tag_quality_metadata(tagged, "BETags"),
                "sample": MetadataValue.md(markdown_table(["title", "base tags", "BETags"], sample, max_chars=120)),
            }
        )

    return [base_tags, betags]


@dataclass(frozen=True)
class DecodedVariant:
    table: ShardedTable  # its BETag shards (all item shards)
    metadata: dict
    tagged: dict[str, list[str]]  # item -> aggregated tags


def decode_variant(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    partitions: StaticPartitionsDefinition,
    variant: BetagVariant,
    config: BetagsRunConfig,
    llm: LLMResource,
    items: dict[str, list[str]],
    *,
    first_group_of: DecodedVariant | None = None,
) -> DecodedVariant:
    """Decode ``variant`` for ``items`` (item -> canonical base tags) of the run's item shards
    into the BETag shards, or, with ``first_group_of`` (its diverse twin, written in this run),
    take each item's group 0 of that decode instead (no model is loaded)."""
    layout = warehouse.layout
    tag_map, vocabulary_build = tag_store.load_tag_map(layout)
    pointer = tag_store.current_adapter(layout)
    # the base model's ablations are prompted as the adapter was trained, so they differ by the finetuning only
    writing = tag_store.adapter_item_writing(tag_store.adapter_manifest(pointer))
    # a variant read off another's group 0 decodes nothing, so it needs no prompt text
    titles = item_titles(layout.database_path) if writing.with_title and first_group_of is None else None
    if variant.finetuned:
        if pointer is None:
            raise FileNotFoundError(
                f"no behavior adapter in {layout.directory}: materialize llm/behavior_adapter "
                "(the betag_pipeline job or `betag run`) before refreshing BETags"
            )
        adapter_id = pointer["adapter_id"]
    else:
        adapter_id = "none"
    model = None
    if first_group_of is None:
        base = llm.load()  # a fresh copy: merging an adapter changes the weights it is given
        model = load_adapter(base, Path(pointer["folder"])) if variant.finetuned else base
    betag_config = to_dataclass(config, BetagConfig)
    betag_config = replace(betag_config, decoding=variant_decoding(variant, betag_config.decoding))
    table = tag_store.betag_table(
        layout,
        variant.name,
        adapter_id,
        llm.identity(),
        betag_config,
        vocabulary_build or "none",
        prompt_version=writing.prompt_version,
        first_group_of=first_group_of.table if first_group_of else None,
    )
    how = f"group 0 of {first_group_of.table.run_key['variant']}" if first_group_of else "decoded"
    context.log.info(
        f"BETag variant {variant.name}: {betag_config.decoding.num_groups} group(s), adapter {adapter_id}, {how}"
    )
    counts = _each_item_shard(
        context,
        warehouse,
        partitions,
        "betags",
        items,
        lambda item_shard, members: betag_run(
            model,
            {item_id: tags for item_id, tags in items.items() if item_id in members},
            table.for_item_shard(item_shard),
            betag_config,
            shard_size=config.shard_size,
            log=context.log.info,
            tag_map=tag_map,
            titles=titles,
            first_group_of=first_group_of.table.for_item_shard(item_shard) if first_group_of else None,
        ),
    )
    aggregated = tag_store.latest_by_item(table)
    tagged = {item_id: [t["tag"] for t in aggregated[item_id]] for item_id in items if item_id in aggregated}
    metadata = {"adapter_id": adapter_id, "from_first_group_of_a_diverse_decode": first_group_of is not None}
    return DecodedVariant(table, {**metadata, **run_counts_metadata(counts)}, tagged)


def betag_fit_metadata(
    layout: WarehouseLayout, decoded: DecodedVariant, items: dict[str, list[str]], config: BetagsRunConfig
) -> dict:
    """In-sample fit and input sensitivity of a decode (``llm/fit.py``), against behavior targets
    as long as the adapter's answers."""
    manifest = tag_store.adapter_manifest(tag_store.current_adapter(layout))
    n_target_tags = manifest.get("lora", {}).get("max_answer_tags", LoraConfig.max_answer_tags)
    beams = tag_store.latest_by_item(decoded.table, "beam_tags")
    first_generated = 1 if config.include_base_tags else 0  # beam 0 holds the base tags
    generated = {item_id: beams[item_id][first_generated:] for item_id in items if item_id in beams}
    return fit_metadata(measure_fit(generated, items, tag_store.behavior_targets(layout, n_target_tags)))


@asset(
    key=keys.TAG_VOCABULARY,
    deps=[CURRENT_RAW_BASE_TAGS],
    group_name="llm",
    description=(
        "The canonical tag vocabulary: spelling variants unified, instruction echoes and tags on too many items "
        "dropped, near-duplicates merged by MiniLM similarity (most frequent first). Built once, then extended "
        "with the tags of new items, so existing items keep their canonical tags."
    ),
)
def tag_vocabulary(context: AssetExecutionContext, config: TagVocabularyRunConfig, warehouse: WarehouseResource):
    from dagster_betag.evaluation.text_encoder import TextEncoder

    layout = warehouse.layout
    raw = tag_store.current_raw_base_tags(layout)
    vocabulary_config = to_dataclass(config, VocabularyConfig)
    config_id = stable_hash(vocabulary_config, length=12)
    stored, stored_config_id = tag_store.load_tag_map(layout)
    # the encoder loads only when a merge runs (a refresh without new tags needs none)
    encode = (lambda texts: TextEncoder().encode(texts)) if vocabulary_config.merge_threshold is not None else None
    if stored_config_id == config_id:
        tag_map = stored.extended(raw, vocabulary_config, encode)
    else:
        tag_map = build_tag_map(raw, vocabulary_config, encode, instructions=tag_store.PROMPT_INSTRUCTIONS)
    path = tag_store.write_tag_map(layout, tag_map, config_id)
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
    key=keys.FINETUNE_EXAMPLES,
    deps=[keys.model("marts", "fct_behavior_sessions"), CANONICAL_BASE_TAGS],
    group_name="llm",
    description=(
        "Next-item windows over train-only behavior sessions, items written as their base tags, and/or one "
        "per-item example per item with train successors (its behavior target as answer)."
    ),
)
def finetune_examples(context: AssetExecutionContext, config: FinetuneExamplesRunConfig, warehouse: WarehouseResource):
    layout = warehouse.layout
    window_config = to_dataclass(config, WindowConfig)
    tags = tag_store.current_base_tags(layout)
    windows = build_windows(
        behavior_sessions(layout.database_path),
        set(tags),
        window_config,
        session_recency(layout.database_path),
        # only per-item examples need the targets (which items have behavior)
        tag_store.behavior_targets(layout) if window_config.examples != "windows" else None,
    )
    frame = Window.to_frame(windows)
    path = tag_store.write_frame(tag_store.finetune_examples_path(layout), frame)
    return MaterializeResult(
        metadata={
            "dagster/row_count": frame.height,
            "n_validation": int(frame["is_validation"].sum()),
            "n_one_item_windows": int((frame["context_item_ids"].list.len() == 1).sum()),
            "n_per_item_examples": int(frame["is_item_target"].sum()),
            "n_items_with_base_tags": len(tags),
            "path": str(path),
            "preview": MetadataValue.md(markdown_table(frame.columns, frame.head(5).rows())),
        }
    )


@asset(
    key=keys.BEHAVIOR_ADAPTER,
    deps=[keys.FINETUNE_EXAMPLES],
    group_name="llm",
    description="LoRA adapter finetuned to predict the next item's tags; saved under models/adapters/<id>/.",
)
def behavior_adapter(
    context: AssetExecutionContext, config: BehaviorAdapterRunConfig, llm: LLMResource, warehouse: WarehouseResource
):
    layout = warehouse.layout
    lora = to_dataclass(config, LoraConfig)
    tags = tag_store.current_base_tags(layout)
    titles = item_titles(layout.database_path) if item_writing_named(lora.item_writing).with_title else None
    examples = pl.read_parquet(tag_store.finetune_examples_path(layout))
    windows = Window.from_frame(examples)
    # the behavior targets answer per-item examples and are what the fit curve measures against
    needs_targets = lora.fit_curve_items > 0 or any(window.is_item_target for window in windows)
    targets = tag_store.behavior_targets(layout, lora.max_answer_tags, lora.target_weighting) if needs_targets else {}
    data_fingerprint = stable_hash(
        examples.hash_rows().sum(), sorted(tags.items()), sorted(targets.items()), titles and sorted(titles.items()),
        length=12,
    )  # fmt: skip
    artifact = finetune_run(
        llm.load(),
        windows,
        tags,
        lora,
        targets_by_item=targets,
        titles=titles,
        adapters_dir=settings.adapters_dir(),
        data_fingerprint=data_fingerprint,
        log=context.log.info,
    )
    tag_store.write_adapter_pointer(
        layout,
        {
            "adapter_id": artifact.adapter_id,
            "folder": str(artifact.folder),
            ADAPTER_LEARNABLE_COUNT: learnable_interaction_count(layout),
        },
    )
    manifest = artifact.manifest
    return MaterializeResult(
        metadata={
            "adapter_id": artifact.adapter_id,
            "folder": str(artifact.folder),
            "reused_existing_adapter": artifact.reused,
            **{
                name: manifest[name]
                for name in (
                    "n_train_examples",
                    "validation_loss_before",
                    "validation_loss_after",
                    "train_loss_first_step",
                    "train_loss_last_step",
                    "seconds",
                    "item_writing",
                    "best_epoch",
                )
            },
            **epochs_metadata(manifest.get("epochs", [])),
            "loss_curve": MetadataValue.md(markdown_image(artifact.loss_png, "loss curve")),
            **({"fit_curve": MetadataValue.md(markdown_image(artifact.fit_png, "fit curve"))} if artifact.fit_png else {}),
        }
    )
