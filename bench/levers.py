"""Measure one configuration of the tagging levers: materialize a slice of the pipeline on an
existing warehouse with run config overrides, so every measured lever lands in eval_results.

    BETAG_WAREHOUSE_DIR=$PWD/warehouse/full python -m bench.levers \\
        --from llm/tag_vocabulary --config '{"llm__betags": {"config": {"decoding": {"num_groups": 8}}}}' \\
        --profile full --no-recommenders

runs llm/tag_vocabulary and everything downstream of it (finetuning, BETags, the dbt tag
tables, the evaluation) with the full profile's scope (``--exclude llm/finetune_examples
llm/behavior_adapter llm/betags`` re-evaluates the tags already there); the evaluation's ``config`` column in
marts.eval_results records the evaluation settings, and the asset metadata the rest.
"""

from __future__ import annotations

import argparse
import json
import time

from dagster import AssetKey, AssetSelection, materialize

from dagster_betag.defs.config import profile_run_config
from dagster_betag.defs.keys import EVAL_RESULTS_SHARDS, op_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="start", required=True, help="asset key (a/b) to start from, with its downstream")
    parser.add_argument("--exclude", nargs="*", default=[], help="asset keys left out (their downstream stays)")
    parser.add_argument("--profile", default="full")
    parser.add_argument("--config", default="{}", help="JSON run config merged per op over the profile's")
    parser.add_argument("--no-recommenders", action="store_true", help="retrieval only in the evaluation")
    args = parser.parse_args()

    from dagster_betag.cli import _prepare_dbt_manifest

    _prepare_dbt_manifest()
    from dagster_betag.definitions import build_definitions
    from dagster_betag.defs.partitions import every_item_shard
    from dagster_betag.defs.resources import build_resources

    defs = build_definitions()
    selection = AssetSelection.keys(AssetKey(args.start.split("/"))).downstream()
    if args.exclude:
        selection = selection - AssetSelection.keys(*(AssetKey(key.split("/")) for key in args.exclude))
    selected = {op_name(key) for key in selection.resolve(defs.resolve_asset_graph())}
    run_config = profile_run_config(args.profile, ops=selected)
    overrides = json.loads(args.config)
    if args.no_recommenders:
        overrides.setdefault(op_name(EVAL_RESULTS_SHARDS), {}).setdefault("config", {})["recommenders"] = []
    for op, override in overrides.items():
        if op not in selected:
            continue
        merged = run_config["ops"].setdefault(op, {"config": {}})
        merged["config"] = {**merged["config"], **override.get("config", {})}
    assets = list(defs.assets) + list(defs.asset_checks or [])
    started = time.perf_counter()
    result = materialize(
        assets,
        selection=selection,
        resources=build_resources(),
        run_config=run_config,
        tags=every_item_shard(),
        raise_on_error=False,
    )
    for event in result.get_step_success_events() + result.get_step_failure_events():
        print(event.step_key, event.event_type_value)
    print(f"{'ok' if result.success else 'FAILED'} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
