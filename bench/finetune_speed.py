"""LoRA finetuning: examples/s, validation loss and peak memory, the first version vs today's.

    python bench/finetune_speed.py [--examples 200] [--repeats 2] [--epochs 1]

Needs a built warehouse (`betag run`; $BETAG_WAREHOUSE_DIR) for the behavior sessions and
base tags. The same windows (``WindowConfig(max_examples=--examples)``) are trained on
once per variant, each in its own process (so each peak resident memory is its own), the
variants in turn, ``--repeats`` times; the table shows medians. "first version" is
``LoraConfig`` with every saving switched off: full-vocabulary logits at every position,
every example run whole, each batch in one pass, float32 matrix products.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from dataclasses import replace

VARIANTS = {
    "first version": {
        "answer_logits_only": False, "share_prompt_prefix": False, "max_batch_tokens": None, "compute_dtype": "float32"
    },
    "float32, every saving": {"compute_dtype": "float32"},
    "today's default": {},
}


def train_once(variant: str, n_examples: int, epochs: int) -> dict:
    from dagster_betag import settings, tag_store
    from dagster_betag.llm.finetune import LoraConfig, WindowConfig, build_windows, train_lora
    from dagster_betag.llm.model import LLMConfig, load_llm
    from dagster_betag.warehouse import WarehouseLayout, behavior_sessions

    layout = WarehouseLayout(settings.warehouse_dir())
    tags = tag_store.current_base_tags(layout)
    # a validation share large enough that the loss means something on a few hundred windows
    window_config = WindowConfig(max_examples=n_examples, validation_share=0.2)
    windows = build_windows(behavior_sessions(layout.database_path), set(tags), window_config)
    config = replace(LoraConfig(epochs=epochs), **VARIANTS[variant])
    result = train_lora(load_llm(LLMConfig()), windows, tags, config)
    return {
        "variant": variant,
        "train_examples": result.n_train_examples,
        "validation_examples": result.n_validation_examples,
        "seconds": result.seconds,
        "examples_per_s": result.n_train_examples * epochs / result.seconds,
        "validation_loss_before": result.validation_loss_before,
        "validation_loss_after": result.validation_loss_after,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variant", choices=list(VARIANTS), help="train one variant in this process (JSON out)")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(train_once(args.variant, args.examples, args.epochs)))
        return
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:
            command = [sys.executable, __file__, "--variant", name, "--examples", str(args.examples)]
            output = subprocess.run([*command, "--epochs", str(args.epochs)], check=True, capture_output=True, text=True)
            runs[name].append(json.loads(output.stdout.strip().splitlines()[-1]))
    first = runs["first version"][0]
    print(
        f"{first['train_examples']} training and {first['validation_examples']} validation windows, "
        f"{args.epochs} epoch(s), medians of {args.repeats} runs\n"
    )
    print("| variant | examples/s | speed-up | validation loss before -> after | peak RSS MiB |")
    print("|---|---|---|---|---|")
    baseline = statistics.median(r["examples_per_s"] for r in runs["first version"])
    for name, results in runs.items():
        speed = statistics.median(r["examples_per_s"] for r in results)
        after = statistics.median(r["validation_loss_after"] for r in results)
        peak = statistics.median(r["peak_rss_mib"] for r in results)
        print(
            f"| {name} | {speed:.2f} | {speed / baseline:.2f}x | "
            f"{results[0]['validation_loss_before']:.4f} -> {after:.4f} | {peak:.0f} |"
        )


if __name__ == "__main__":
    main()
