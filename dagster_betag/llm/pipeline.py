"""The three LLM stages as resumable runs over plain data (what the Dagster assets call).

Base tags and BETags are written in shards of items: a crash loses at most one shard,
and a rerun with the same model, adapter and prompt skips what already landed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from dagster_betag.hashing import stable_hash
from dagster_betag.llm.base_tags import BaseTagConfig, FewShot, catalog_attribute_values
from dagster_betag.llm.behavior import item_writing_named
from dagster_betag.llm.betag import BetagConfig, ItemBetags, WeightedTag, first_group, generate_betags
from dagster_betag.llm.model import QUANTIZED_DTYPES, ModelError
from dagster_betag.llm.heap import release_freed_memory
from dagster_betag.llm.decoding import DiverseBeamConfig
from dagster_betag.llm.finetune import LoraConfig, TrainingResult, Window, train_lora
from dagster_betag.llm.fit import measure_fit
from dagster_betag.llm.prompts import DEFAULT_FEW_SHOT, ItemDescription, describe_item
from dagster_betag.llm.tagger import BaseTagContext, Tagger
from dagster_betag.llm.vocabulary import TagMap
from dagster_betag.plots import fit_curve_png, loss_curve_png
from dagster_betag.progress import Progress
from dagster_betag.shards import RunCounts, ShardedTable, run_resumable

Log = Callable[[str], None]


def now_text() -> str:
    # microseconds: a refresh's rows sort after the ones it replaces even within one second
    return datetime.now(UTC).isoformat(timespec="microseconds")


def base_tag_run(
    tagger: Tagger,
    items: Sequence[ItemDescription],
    table: ShardedTable,
    config: BaseTagConfig,
    *,
    shard_size: int,
    log: Log,
    only: Collection[str] | None = None,
    few_shot: FewShot = DEFAULT_FEW_SHOT,
) -> RunCounts:
    """Base tags of ``items`` (of those in ``only`` when given) not yet in ``table`` for their
    current description, then published. ``tagger`` is a local ``LoadedLLM`` or an
    ``api.ApiTagger``."""
    by_id = {item.item_id: item for item in items}
    # built once from every item in scope (pass them all, even when ``only`` selects an item
    # shard), so an item's tags never depend on the shard it lands in
    context = BaseTagContext(few_shot, catalog_attribute_values(items))
    # what the prompt shows of the item: when it changes, the item is tagged again
    versions = {item.item_id: stable_hash(describe_item(item)) for item in items}

    def produce(item_ids: list[str], advance: Callable[[int], None]) -> pl.DataFrame:
        items_in_shard = [by_id[i] for i in item_ids]
        tags = tagger.generate_base_tags(items_in_shard, config, context=context, on_batch=advance)
        release_freed_memory()
        return pl.DataFrame(
            {
                "item_id": item_ids,
                "tags": tags,
                "input_hash": [versions[i] for i in item_ids],
                "generated_at": [now_text()] * len(item_ids),
            },
            schema={"item_id": pl.Utf8, "tags": pl.List(pl.Utf8), "input_hash": pl.Utf8, "generated_at": pl.Utf8},
        )

    keys = [item_id for item_id in by_id if only is None or item_id in only]
    return run_resumable(keys, table, produce, shard_size=shard_size, what="base tags", log=log, versions=versions)


def betag_run(
    llm,
    base_tags: Mapping[str, Sequence[str]],
    table: ShardedTable,
    config: BetagConfig,
    *,
    shard_size: int,
    log: Log,
    tag_map: TagMap | None = None,
    titles: Mapping[str, str] | None = None,
    first_group_of: ShardedTable | None = None,
) -> RunCounts:
    """BETags of the items in ``base_tags`` not yet in ``table`` for their current base tags
    (the prompt's input), then published; ``tag_map`` canonicalizes (and may constrain) the beams;
    ``titles`` go into the prompts of an adapter trained with them (its item writing).

    With ``first_group_of`` (the shards of a diverse decode of the same model, already run
    for these items), nothing is decoded: each item's one-beam result is group 0 of its
    diverse decode (``betag.first_group``); ``llm`` may then be None.
    """
    versions = {item_id: stable_hash(list(tags)) for item_id, tags in base_tags.items()}

    def produce(item_ids: list[str], advance: Callable[[int], None]) -> pl.DataFrame:
        if first_group_of is None:
            results = generate_betags(
                llm,
                [(i, base_tags[i]) for i in item_ids],
                config,
                tag_map=tag_map,
                titles=titles,
                on_batch=advance,
            )
        else:
            results = [first_group(item, config) for item in _stored_betags(first_group_of, item_ids, versions)]
            advance(len(item_ids))
        release_freed_memory()
        return pl.DataFrame(
            {
                "item_id": [r.item_id for r in results],
                "beam_texts": [r.beam_texts for r in results],
                "beam_tags": [r.beam_tags for r in results],
                "tags": [[asdict(t) for t in r.tags] for r in results],
                "input_hash": [versions[r.item_id] for r in results],
                "generated_at": [now_text()] * len(results),
            },
            schema={
                "item_id": pl.Utf8,
                "beam_texts": pl.List(pl.Utf8),
                "beam_tags": pl.List(pl.List(pl.Utf8)),
                "tags": pl.List(pl.Struct({"tag": pl.Utf8, "n_beams": pl.Int64, "score": pl.Float64})),
                "input_hash": pl.Utf8,
                "generated_at": pl.Utf8,
            },
        )

    keys = list(base_tags)
    return run_resumable(keys, table, produce, shard_size=shard_size, what="BETags", log=log, versions=versions)


def _stored_betags(table: ShardedTable, item_ids: Sequence[str], versions: Mapping[str, str]) -> list[ItemBetags]:
    """The rows ``table`` holds for ``item_ids`` at their current ``versions``, in that order."""
    frame = table.read()
    rows = {} if frame is None else {
        row["item_id"]: row for row in frame.sort("generated_at").iter_rows(named=True)
        if versions.get(row["item_id"]) == row["input_hash"]
    }
    missing = [item_id for item_id in item_ids if item_id not in rows]
    if missing:
        raise ValueError(
            f"{len(missing)} item(s), e.g. {missing[0]!r}, have no current diverse decode to take group 0 from"
        )
    return [
        ItemBetags(
            item_id,
            rows[item_id]["beam_texts"],
            rows[item_id]["beam_tags"],
            [WeightedTag(**tag) for tag in rows[item_id]["tags"]],
        )
        for item_id in item_ids
    ]


@dataclass(frozen=True)
class AdapterArtifact:
    adapter_id: str
    folder: Path
    manifest: dict
    loss_png: bytes
    fit_png: bytes | None = None  # the fit curve, when one was measured
    reused: bool = False  # found already trained under its id


# the fit curve's probe decode: cheap, and the same at every epoch so the points compare
FIT_CURVE_DECODING = BetagConfig(decoding=DiverseBeamConfig(num_groups=4), include_base_tags=False)


def finetune_run(
    llm,
    windows: Sequence[Window],
    tags_by_item: Mapping[str, Sequence[str]],
    lora_config: LoraConfig,
    *,
    targets_by_item: Mapping[str, Sequence[str]],
    titles: Mapping[str, str] | None,
    adapters_dir: Path,
    data_fingerprint: str,
    log: Log,
) -> AdapterArtifact:
    """Train a LoRA adapter and save it with its manifest under ``adapters_dir/<id>/``.
    ``targets_by_item``: every item's behavior target (``llm/fit.py``), the answers of per-item
    examples and what the fit curve measures against.

    The id hashes the base model, the data and every hyper-parameter, so the same inputs
    land in the same folder; the folder appears whole (written aside, then renamed). An
    adapter already saved under that id is reused rather than trained again (a resumed or
    scheduled run with unchanged inputs).
    """
    adapter_id = stable_hash(llm.fingerprint, data_fingerprint, lora_config, length=12)
    folder = adapters_dir / adapter_id
    if (folder / "manifest.json").is_file():
        log(f"adapter {adapter_id} already trained on these inputs; reusing {folder}")
        manifest = json.loads((folder / "manifest.json").read_text())
        fit_png = folder / "fit_curve.png"
        return AdapterArtifact(
            adapter_id,
            folder,
            manifest,
            (folder / "loss_curve.png").read_bytes(),
            fit_png.read_bytes() if fit_png.is_file() else None,
            reused=True,
        )
    progress = Progress(max(1, len(windows)), "LoRA finetuning", log, unit="step")

    def on_step(step: int, total_steps: int, loss: float) -> None:
        progress.set_total(total_steps)
        progress.advance(1)

    probe = None
    if lora_config.fit_curve_items:
        probe = _fit_probe(llm, windows, tags_by_item, targets_by_item, titles, lora_config)
    try:
        result = train_lora(
            llm, windows, tags_by_item, lora_config,
            targets_by_item=targets_by_item, titles=titles, on_step=on_step, on_epoch=probe,
        )  # fmt: skip
    finally:
        progress.close()
        release_freed_memory()
    manifest = _adapter_manifest(adapter_id, llm, data_fingerprint, lora_config, result)
    loss_png = loss_curve_png(result.step_losses, result.validation_loss_before, result.validation_loss_after)
    fit_png = fit_curve_png(result.epochs, result.best_epoch) if probe else None
    staging = adapters_dir / f".{adapter_id}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    result.model.save_pretrained(staging, safe_serialization=True)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (staging / "loss_curve.png").write_bytes(loss_png)
    if fit_png:
        (staging / "fit_curve.png").write_bytes(fit_png)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    log(f"adapter {adapter_id}: validation loss {result.validation_loss_before:.3f} -> {result.validation_loss_after:.3f}")
    return AdapterArtifact(adapter_id, folder, manifest, loss_png, fit_png)


def _fit_probe(
    llm,
    windows: Sequence[Window],
    tags_by_item: Mapping[str, Sequence[str]],
    targets_by_item: Mapping[str, Sequence[str]],
    titles: Mapping[str, str] | None,
    config: LoraConfig,
) -> Callable[[object], dict]:
    """``train_lora``'s ``on_epoch``: decodes ``config.fit_curve_items`` training items (context
    items of train examples with a behavior target, chosen by a hash of their id) with
    ``FIT_CURVE_DECODING`` and measures the in-sample fit, the same share in another item's beams
    (what the model writes whatever the item) and the beams' pairwise Jaccard."""
    seen = {
        item for window in windows if not window.is_validation for item in window.context_item_ids
        if targets_by_item.get(item)
    }  # fmt: skip
    probed = sorted(seen, key=lambda item: stable_hash(item))[: config.fit_curve_items]
    with_title = item_writing_named(config.item_writing).with_title

    def probe(model) -> dict:
        results = generate_betags(
            replace(llm, model=model), [(i, tags_by_item[i]) for i in probed], FIT_CURVE_DECODING,
            titles=titles if with_title else None,
        )  # fmt: skip
        fit = measure_fit({r.item_id: r.beam_tags for r in results}, tags_by_item, targets_by_item)
        return {
            "in_sample_fit": fit.in_sample_fit,
            "in_sample_fit_of_other_items": fit.in_sample_fit_of_other_items,
            "beam_jaccard": fit.beam_jaccard,
            "n_fit_items": fit.n_items,
        }

    return probe


def _adapter_manifest(
    adapter_id: str, llm, data_fingerprint: str, lora_config: LoraConfig, result: TrainingResult
) -> dict:
    return {
        "adapter_id": adapter_id,
        "base_model": llm.name,
        "base_model_fingerprint": llm.fingerprint,
        "data_fingerprint": data_fingerprint,
        "behavior_prompt_version": item_writing_named(lora_config.item_writing).prompt_version,
        "item_writing": lora_config.item_writing,
        "lora": asdict(lora_config),
        "n_train_examples": result.n_train_examples,
        "n_validation_examples": result.n_validation_examples,
        "train_loss_first_step": result.step_losses[0] if result.step_losses else None,
        "train_loss_last_step": result.step_losses[-1] if result.step_losses else None,
        "validation_loss_before": result.validation_loss_before,
        "validation_loss_after": result.validation_loss_after,
        "step_losses": result.step_losses,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "created_at": now_text(),
    }


def load_adapter(llm, folder: Path):
    """``llm`` with the adapter's weights merged in (plain model, fast to decode)."""
    from peft import PeftModel

    if llm.precision in QUANTIZED_DTYPES:
        raise ModelError(
            f"an adapter cannot be merged into {llm.precision} layers: decode BETags in float32 or bfloat16 "
            "(int8 writes base tags only)"
        )
    merged = PeftModel.from_pretrained(llm.model, folder).merge_and_unload()
    merged.eval()
    return replace(llm, model=merged)
