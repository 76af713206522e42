"""Throughput of base-tag and BETag generation: batched pipeline code vs a naive loop.

    python bench/llm_throughput.py [--items 32] [--groups 4] [--dtype auto|float32|bfloat16]

Needs a built warehouse (`betag run`) for the item descriptions. Both variants run in
this one process on the same items, so the ratio is meaningful on a noisy machine;
absolute numbers are not. The naive loop is what a first version does: one item at a
time, `model.generate` greedy, once per item (base tags) or once per group (BETags, no
diversity penalty). Tokens are counted on the decoded outputs (useful tokens only).
Prints a markdown table and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from dagster_betag import settings
from dagster_betag.llm.base_tags import BaseTagConfig, generate_base_tags
from dagster_betag.llm.behavior import prompt_text
from dagster_betag.llm.betag import BetagConfig, generate_betags
from dagster_betag.llm.decoding import DiverseBeamConfig
from dagster_betag.llm.model import LLMConfig, load_llm
from dagster_betag.llm.prompts import ItemDescription, base_tag_prompt
from dagster_betag.llm.tags import format_tags
from dagster_betag.warehouse import WarehouseLayout, popular_kcore_items


def count_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in texts)


@torch.no_grad()
def naive_generate(llm, prompts: list[str], max_new_tokens: int) -> list[str]:
    outputs = []
    for prompt in prompts:
        encoded = llm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        generated = llm.model.generate(
            **encoded, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=llm.tokenizer.pad_token_id
        )
        outputs.append(llm.tokenizer.decode(generated[0, encoded.input_ids.shape[1] :], skip_special_tokens=True))
    return outputs


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--dtype", default="auto", help="model precision (LLMConfig.dtype)")
    args = parser.parse_args()

    llm = load_llm(LLMConfig(dtype=args.dtype))
    rows = popular_kcore_items(WarehouseLayout(settings.warehouse_dir()).database_path, args.items)
    items = [ItemDescription.from_row(row) for row in rows]
    base_config = BaseTagConfig()
    table = []

    tags, seconds = timed(lambda: generate_base_tags(llm, items, base_config))
    tokens = count_tokens(llm.tokenizer, [format_tags(t) for t in tags])
    table.append(("base tags, batched (pipeline)", len(items), seconds, tokens))
    prompts = [base_tag_prompt(llm.tokenizer, item) for item in items]
    texts, seconds = timed(lambda: naive_generate(llm, prompts, base_config.max_new_tokens))
    table.append(("base tags, naive loop", len(items), seconds, count_tokens(llm.tokenizer, texts)))

    betag_config = BetagConfig(decoding=DiverseBeamConfig(num_groups=args.groups))
    pairs = [(item.item_id, item_tags) for item, item_tags in zip(items, tags)]
    results, seconds = timed(lambda: generate_betags(llm, pairs, betag_config))
    tokens = count_tokens(llm.tokenizer, [text for r in results for text in r.beam_texts])
    table.append((f"BETags, {args.groups} diverse groups (pipeline)", len(items), seconds, tokens))
    betag_prompts = [prompt_text(llm.tokenizer, [t]) for t in tags]
    texts, seconds = timed(
        lambda: [t for _ in range(args.groups) for t in naive_generate(llm, betag_prompts, betag_config.decoding.max_new_tokens)]
    )
    table.append((f"BETags, naive loop x {args.groups}", len(items), seconds, count_tokens(llm.tokenizer, texts)))

    print(f"torch threads: {torch.get_num_threads()}, device: {llm.device}, dtype: {llm.model.dtype}\n")
    print("| stage | items | seconds | items/s | tokens/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for index, (name, n, seconds, tokens) in enumerate(table):
        pair_naive = table[index + 1] if index % 2 == 0 else table[index]
        speedup = f"{pair_naive[2] / seconds:.1f}x" if index % 2 == 0 else "1.0x"
        print(f"| {name} | {n} | {seconds:.1f} | {n / seconds:.2f} | {tokens / seconds:.1f} | {speedup} |")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
