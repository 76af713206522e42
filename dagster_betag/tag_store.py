"""Where the LLM stages keep what they write, and how they read each other's (library code,
no Dagster).

Python writes files under the warehouse's landing folder (Parquet shards, the tag
vocabulary, the finetuning examples, the adapter pointer); dbt reads them and builds the
tables. What a later stage reads back as "an item's base tags" is always a table of the
warehouse, so SQL and Python share one definition:

- ``intermediate.int_base_tag_generations_current``: each item's current generation, tags
  as generated (what the tag vocabulary is built from);
- ``marts.item_base_tags``: those tags through the vocabulary (what finetuning and the BETag
  prompts are written with, and what the marts show).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from dagster_betag.files import replacing
from dagster_betag.hashing import stable_hash
from dagster_betag.llm import fit
from dagster_betag.llm.behavior import DEFAULT_ITEM_WRITING, INSTRUCTION, ItemWriting, item_writing_named
from dagster_betag.llm.prompts import BASE_TAG_PROMPT_VERSION, instruction_texts
from dagster_betag.llm.vocabulary import TagMap
from dagster_betag.shards import ShardedTable
from dagster_betag.warehouse import WarehouseLayout, connect_readonly, fetch_rows, train_successors

if TYPE_CHECKING:
    from dagster_betag.llm.base_tags import BaseTagConfig
    from dagster_betag.llm.model import ModelIdentity
    from dagster_betag.llm.tagger import Tagger  # name, fingerprint and precision: part of every run key

CURRENT_RAW_BASE_TAGS = "intermediate.int_base_tag_generations_current"
CURRENT_BASE_TAGS = "marts.item_base_tags"
CURRENT_ADAPTER_FILE = "current_adapter.json"
FINETUNE_EXAMPLES_FILE = "finetune_examples.parquet"

# what the models are told, whose words make the echo filter of the tag vocabulary
PROMPT_INSTRUCTIONS = (INSTRUCTION, *instruction_texts())


def base_tag_table(
    layout: WarehouseLayout, tagger: Tagger, generation: BaseTagConfig | None = None
) -> ShardedTable:
    """The base-tag shards of this model and prompt version; with ``generation``, only those
    decoded with that configuration at the tagger's precision (what a run resumes from)."""
    run_key = {"model": tagger.name, "model_fingerprint": tagger.fingerprint, "prompt_version": BASE_TAG_PROMPT_VERSION}
    if generation is not None:
        run_key |= {"precision": tagger.precision, "generation": stable_hash(generation, length=12)}
    return ShardedTable(layout.landing_dir / "base_tags", run_key, version_column="input_hash")


def betag_table(
    layout: WarehouseLayout,
    variant: str,
    adapter_id: str,
    model: ModelIdentity,
    decoding: object,
    vocabulary_id: str,
    *,
    prompt_version: str,
    first_group_of: ShardedTable | None = None,
) -> ShardedTable:
    """The BETag shards of one variant decoded by one adapter (``"none"``: the base model) with
    one decoding configuration over one build of the tag vocabulary. ``vocabulary_id`` names
    the build (its config id), not its content: a catalog refresh extends the vocabulary with
    the new items' tags and keeps every existing item's BETags; a rebuild with other settings
    decodes them again. A variant read off group 0 of another's decode (``first_group_of``)
    keys on that too, apart from one decoded on its own."""
    derived = {"first_group_of": first_group_of.run_key_hash} if first_group_of else {}
    run_key = {
        "variant": variant,
        "adapter_id": adapter_id,
        "model": model.name,
        "precision": model.precision,
        "prompt_version": prompt_version,
        "decoding": stable_hash(decoding, *derived.items(), length=12),
        "vocabulary_id": vocabulary_id,
    }
    return ShardedTable(layout.landing_dir / "betags", run_key, version_column="input_hash")


def latest_by_item(table: ShardedTable, column: str = "tags") -> dict[str, object]:
    """item id -> ``column`` of the item's latest row in ``table`` (this run key only): what a
    run just wrote, for its metadata. What later stages read is a warehouse table instead."""
    frame = table.read()
    if frame is None:
        return {}
    latest = frame.sort("generated_at").unique("item_id", keep="last")
    return dict(zip(latest["item_id"].to_list(), latest[column].to_list(), strict=True))


def _tags_by_item(layout: WarehouseLayout, relation: str, tags_sql: str) -> dict[str, list[str]]:
    with connect_readonly(layout.database_path) as connection:
        _, rows = fetch_rows(connection, f"select item_id, {tags_sql} as tags from {relation} group by item_id")
    return {item_id: list(tags) for item_id, tags in rows}


def current_raw_base_tags(layout: WarehouseLayout) -> dict[str, list[str]]:
    """item id -> its current base tags as generated (``int_base_tag_generations_current``)."""
    return _tags_by_item(layout, CURRENT_RAW_BASE_TAGS, "any_value(tags)")


def current_base_tags(layout: WarehouseLayout) -> dict[str, list[str]]:
    """item id -> its current canonical base tags in rank order (``marts.item_base_tags``); an
    item whose tags were all junk has none and is left out."""
    return _tags_by_item(layout, CURRENT_BASE_TAGS, "list(tag order by tag_rank)")


def base_tags_to_prompt(layout: WarehouseLayout) -> dict[str, list[str]]:
    """Every item with a current base-tag generation -> what ``marts.item_base_tags`` shows for
    it: its canonical base tags in rank order, [] when the vocabulary dropped them all (such an
    item is still prompted for BETags, with exactly that)."""
    with connect_readonly(layout.database_path) as connection:
        _, rows = fetch_rows(
            connection,
            f"select generation.item_id, coalesce(list(tag order by tag_rank) filter (where tag is not null), []) "
            f"from {CURRENT_RAW_BASE_TAGS} as generation left join {CURRENT_BASE_TAGS} using (item_id) "
            "group by generation.item_id",
        )
    return {item_id: list(tags) for item_id, tags in rows}


def behavior_targets(
    layout: WarehouseLayout, max_tags: int | None = None, weighting: str = "transitions"
) -> dict[str, list[str]]:
    """item id -> its behavior target (``llm/fit.py``): the current base tags of its train
    successors, weighted by transitions (and with ``transitions_idf`` by their rarity)."""
    successors = train_successors(layout.database_path)
    return fit.behavior_targets(successors, current_base_tags(layout), max_tags, weighting=weighting)


def adapter_manifest(pointer: Mapping[str, object] | None) -> dict:
    """The manifest of the adapter behind ``pointer`` (``current_adapter``); {} without one."""
    path = Path(str(pointer["folder"])) / "manifest.json" if pointer else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def adapter_item_writing(manifest: Mapping[str, object]) -> ItemWriting:
    """How an adapter (its manifest) writes items in its prompts; the default writing without
    an adapter or for one trained before item writings existed."""
    return item_writing_named(str(manifest.get("item_writing", DEFAULT_ITEM_WRITING)))


def tag_map_path(layout: WarehouseLayout) -> Path:
    return layout.landing_dir / "tag_vocabulary" / "tag_vocabulary.parquet"


def load_tag_map(layout: WarehouseLayout) -> tuple[TagMap, str | None]:
    """The stored tag vocabulary and its config id (an empty map, which changes nothing, before
    llm/tag_vocabulary first ran)."""
    return TagMap.read(tag_map_path(layout), PROMPT_INSTRUCTIONS)


def write_tag_map(layout: WarehouseLayout, tag_map: TagMap, config_id: str) -> Path:
    path = tag_map_path(layout)
    with replacing(path) as temporary:
        tag_map.write(temporary, config_id)
    return path


def api_cache_dir(layout: WarehouseLayout) -> Path:
    """Where an API tagger keeps its answers, so a rerun asks nothing twice."""
    return layout.directory / "cache" / "api"


def finetune_examples_path(layout: WarehouseLayout) -> Path:
    return layout.landing_dir / FINETUNE_EXAMPLES_FILE


def write_frame(path: Path, frame: pl.DataFrame) -> Path:
    with replacing(path) as temporary:
        frame.write_parquet(temporary)
    return path


def write_adapter_pointer(layout: WarehouseLayout, pointer: Mapping[str, object]) -> None:
    """The adapter the BETags decode with (the weekly re-finetune compares its
    ``n_learnable_train_interactions`` with the learnable behavior that arrived since)."""
    with replacing(layout.landing_dir / CURRENT_ADAPTER_FILE) as temporary:
        temporary.write_text(json.dumps(dict(pointer)) + "\n")


def current_adapter(layout: WarehouseLayout) -> dict | None:
    """The pointer the behavior adapter asset writes: adapter id, folder, learnable train interactions it saw."""
    path = layout.landing_dir / CURRENT_ADAPTER_FILE
    return json.loads(path.read_text()) if path.is_file() else None
