"""Throughput of base tags, BETags and a LoRA step, in FLOP/s against the CPU's fp32 peak, per precision.

    python bench/llm_throughput.py [--items 32] [--groups 4] [--dtypes float32,bfloat16,int8] [--threads 2]
        [--repeats 3] [--naive-items 8] [--batch-rows 256] [--lora-windows 16] [--agreement 0]
        [--contrastive-alphas 0,0.5]

Needs a built warehouse (`betag run`, BETAG_WAREHOUSE_DIR) for the item descriptions: the
``--items`` most popular k-core items. Every variant (a precision from ``--dtypes``, i.e.
``LLMConfig.dtype``, times a ``torch.set_num_threads`` value from ``--threads``) runs in this one
process on the same items, and the repeats are interleaved (repeat 1 of every variant, then
repeat 2, ...), so a neighbour's load hits all variants alike; the table shows medians.
Ratios are meaningful on a noisy machine, absolute numbers much less.

Stages:

- base tags, batched: ``generate_base_tags`` (shared prompt prefix, rows leave as they finish);
- base tags, naive loop: one item at a time, ``model.generate`` greedy (``--naive-items`` of
  the items; a one-item loop's rate does not depend on how many items it runs);
- BETags: ``generate_betags`` with ``--groups`` diverse groups of one beam (the default
  DiverseBeamConfig; ``--batch-rows`` rows per batch), prompted with the float32 base tags so
  every precision decodes the same prompts; no tag vocabulary, the base model (no adapter); one
  stage per ``--contrastive-alphas`` value (``decoding.contrastive_alpha``; 0: plain decoding);
- BETags, naive loop: ``model.generate`` greedy once per group and item (no diversity);
- LoRA step: ``finetune.train_lora`` (default LoraConfig) on ``--lora-windows`` windows cut from
  synthetic sessions of the same items (their float32 base tags), on a copy of the model;
  not for int8 (an adapter cannot be trained on quantized layers).

FLOPs (``dagster_betag.llm.flops``) are counted from what each forward pass of the model
actually receives (a hook on the model): every non-pad position of every row, attending to
its row's real context; the shared prompt prefix is run, and counted, once per call; a
decoding step counts one token per row it runs (a row that stopped but has not left the
batch yet still runs, and counts); logits only where the call asks for them
(``logits_to_keep``). Padding is computed but not counted; its share is printed. A LoRA step
counts forward + backward with frozen base weights (``lora_step_flops``: about 2x the forward;
the 6 x params convention would say 3x). "tokens/s" counts useful output tokens (decoded
answers), or trained positions for the LoRA step. The peak is ``flops.cpu_peak()`` (fp32);
bf16 and int8 kernels have higher peaks of their own, so their fraction of the fp32 peak
says how much faster they run, not how near their own limit.

``--agreement N`` then tags the N most popular items at every precision and prints the share
of items whose base-tag list (and whose BETag list, prompted with the float32 base tags) is
identical to float32's. Prints markdown tables and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from dagster_betag import settings
from dagster_betag.llm.base_tags import BaseTagConfig, generate_base_tags
from dagster_betag.llm.behavior import prompt_text
from dagster_betag.llm.betag import BetagConfig, generate_betags
from dagster_betag.llm.decoding import DiverseBeamConfig
from dagster_betag.llm.finetune import LoraConfig, WindowConfig, build_windows, train_lora
from dagster_betag.llm.flops import LMShape, cpu_peak, forward_flops, lora_step_flops
from dagster_betag.llm.model import LLMConfig, LoadedLLM, load_llm
from dagster_betag.llm.prompts import ItemDescription, base_tag_prompt
from dagster_betag.llm.tags import format_tags
from dagster_betag.warehouse import WarehouseLayout, popular_kcore_items

# --- FLOPs of what the model runs ------------------------------------------------------------------


@dataclass
class Work:
    """What the model ran during one timed stage."""

    flops: int = 0  # on real (non-pad) positions
    padded_flops: int = 0  # as computed: every position of the (rows x new tokens) block
    calls: int = 0
    forward_tokens: int = 0
    train_lengths: list[int] = field(default_factory=list)  # real length of each row of each training forward


class Recorder:
    """Adds each forward pass of the hooked models to ``current`` (a closure hook, so a deep copy
    of a hooked model, as the LoRA stage makes, still reports here)."""

    def __init__(self) -> None:
        self.current: Work | None = None

    def hook(self, model) -> None:
        shape = LMShape.from_config(model.config)
        recorder = self

        def count(module, args, kwargs):
            if recorder.current is not None:
                _count(recorder.current, shape, module, args, kwargs)

        model.register_forward_pre_hook(count, with_kwargs=True)


def _count(work: Work, shape: LMShape, module, args, kwargs) -> None:
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        return
    rows, new = ids.shape
    cache = kwargs.get("past_key_values")
    past = int(cache.get_seq_length()) if cache is not None else 0
    keep = kwargs.get("logits_to_keep", 0)
    heads = new if not isinstance(keep, int) or keep == 0 else min(keep, new)
    mask = kwargs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        mask = torch.ones((rows, past + new), dtype=torch.long)
    mask = mask[:, -(past + new) :].long()
    real_new = mask[:, -new:]
    keys = int((mask.cumsum(dim=1)[:, -new:] * real_new).sum())  # each real token attends to its row's real keys
    tokens, head_tokens = int(real_new.sum()), int(real_new[:, -heads:].sum())
    work.flops += (
        2 * shape.layers * shape.layer_params * tokens
        + 2 * shape.lm_head_params * head_tokens
        + 4 * shape.layers * shape.attention_width * keys
    )
    work.padded_flops += rows * forward_flops(shape, new, past, lm_head_tokens=heads)
    work.calls += 1
    work.forward_tokens += tokens
    if torch.is_grad_enabled() and module.training:
        work.train_lengths.extend(int(n) for n in real_new.sum(dim=1))


# --- stages ----------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Variant:
    dtype: str
    threads: int

    @property
    def label(self) -> str:
        return f"{self.dtype}, {self.threads} thr"


@dataclass
class Measured:
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time (all threads)
    flops: int = 0
    padded_flops: int = 0
    items: int = 0
    tokens: int = 0
    calls: int = 0


def run_stage(recorder: Recorder, function: Callable[[], tuple[int, int]]) -> tuple[float, int, int, Work]:
    """Time ``function`` (returning items and useful tokens) with the model's forwards counted:
    (seconds, items, tokens, Work)."""
    work = Work()
    recorder.current = work
    started = time.perf_counter()
    try:
        items, tokens = function()
    finally:
        recorder.current = None
    return time.perf_counter() - started, items, tokens, work


def cpu_time() -> float:
    return time.process_time()


def lora_stage(llm: LoadedLLM, windows, tags_by_item, config: LoraConfig):
    """A callable training ``config``'s steps on a copy of the model; it records the seconds from
    the first step's start to the last step's end in ``step_seconds``."""

    def run() -> tuple[int, int]:
        copied = replace(llm, model=copy.deepcopy(llm.model))
        marks: list[float] = []
        first_forward: list[float] = []
        handle = copied.model.register_forward_pre_hook(
            lambda module, args: first_forward.append(time.perf_counter()) if module.training and not first_forward else None
        )
        try:
            result = train_lora(copied, windows, tags_by_item, config, on_step=lambda *_: marks.append(time.perf_counter()))
        finally:
            handle.remove()
        run.step_seconds = marks[-1] - first_forward[0]
        return result.n_train_examples, 0  # tokens: filled from the trained lengths

    return run


def synthetic_windows(items: list[ItemDescription], n_windows: int) -> list:
    """Windows of sessions made of consecutive popular items, 5 per session."""
    ids = [item.item_id for item in items]
    sessions = [(f"bench-{i}", ids[i : i + 5]) for i in range(0, len(ids))]
    config = WindowConfig(max_examples=n_windows, validation_share=0.0, seed=0)
    return build_windows(sessions, set(ids), config)


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--groups", type=int, default=DiverseBeamConfig().num_groups)
    parser.add_argument("--dtypes", default="float32,bfloat16,int8", help="LLMConfig.dtype values, comma-separated")
    parser.add_argument("--threads", default=str(torch.get_num_threads()), help="torch threads, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-items", type=int, default=2, help="items of the naive loops (0 skips them)")
    parser.add_argument("--naive-repeats", type=int, default=1, help="repeats of the naive loops (they are slow)")
    parser.add_argument("--batch-rows", type=int, default=BetagConfig().batch_rows)
    parser.add_argument(
        "--contrastive-alphas", default="0", help="decoding.contrastive_alpha values of the BETag stage, comma-separated"
    )
    parser.add_argument("--lora-windows", type=int, default=16, help="training windows of the LoRA stage (0 skips it)")
    parser.add_argument("--stages", default="base,naive,betag,lora", help="which stages to time")
    parser.add_argument("--agreement", type=int, default=0, help="items of the identical-tags comparison (0 skips it)")
    args = parser.parse_args()

    dtypes = args.dtypes.split(",")
    if dtypes[0] != "float32":
        dtypes = ["float32", *[d for d in dtypes if d != "float32"]]  # the reference
    threads = [int(t) for t in args.threads.split(",")]
    stages = set(args.stages.split(","))
    recorder = Recorder()
    llms: dict[str, LoadedLLM] = {}
    for dtype in dtypes:
        llms[dtype] = load_llm(LLMConfig(dtype=dtype))
        recorder.hook(llms[dtype].model)
    reference = llms["float32"]
    shape = LMShape.from_config(reference.model.config)
    tokenizer = reference.tokenizer
    database = WarehouseLayout(settings.warehouse_dir()).database_path
    items = [ItemDescription.from_row(row) for row in popular_kcore_items(database, max(args.items, args.agreement))]
    timed_items, naive_items = items[: args.items], items[: min(args.naive_items, args.items)]
    base_config = BaseTagConfig()
    betag_config = BetagConfig(decoding=DiverseBeamConfig(num_groups=args.groups), batch_rows=args.batch_rows)
    lora_config = LoraConfig(warmup_steps=1)
    torch.set_num_threads(max(threads))
    reference_tags = generate_base_tags(reference, timed_items, base_config)  # prompts of BETags and LoRA
    pairs = [(item.item_id, tags) for item, tags in zip(timed_items, reference_tags)]
    tags_by_item = {item.item_id: tags for item, tags in zip(timed_items, reference_tags)}
    windows = synthetic_windows(timed_items, args.lora_windows) if args.lora_windows else []

    def base(llm):
        tags = generate_base_tags(llm, timed_items, base_config)
        return len(timed_items), count_tokens(tokenizer, [format_tags(t) for t in tags])

    def base_naive(llm):
        prompts = [base_tag_prompt(tokenizer, item) for item in naive_items]
        return len(naive_items), count_tokens(tokenizer, naive_generate(llm, prompts, base_config.max_new_tokens))

    def betag(llm, alpha=0.0):
        config = replace(betag_config, decoding=replace(betag_config.decoding, contrastive_alpha=alpha))
        results = generate_betags(llm, pairs, config)
        return len(pairs), count_tokens(tokenizer, [text for r in results for text in r.beam_texts])

    def betag_naive(llm):
        prompts = [prompt_text(tokenizer, [tags]) for _, tags in pairs[: len(naive_items)]]
        limit = betag_config.decoding.max_new_tokens
        texts = [t for _ in range(args.groups) for t in naive_generate(llm, prompts, limit)]
        return len(prompts), count_tokens(tokenizer, texts)

    plan: list[tuple[str, Callable, bool]] = []  # (stage name, function of the llm, is LoRA)
    if "base" in stages:
        plan.append(("base tags, batched", base, False))
    if "naive" in stages and naive_items and "base" in stages:
        plan.append(("base tags, naive loop", base_naive, False))
    if "betag" in stages:
        for alpha in (float(a) for a in args.contrastive_alphas.split(",")):
            contrast = f", contrastive alpha {alpha:g}" if alpha else ""
            stage = functools.partial(betag, alpha=alpha)
            plan.append((f"BETags, {args.groups} groups, {args.batch_rows} rows{contrast}", stage, False))
    if "naive" in stages and naive_items and "betag" in stages:
        plan.append((f"BETags, naive loop x {args.groups}", betag_naive, False))
    if "lora" in stages and windows:
        plan.append((f"LoRA step (r={lora_config.rank}, batch {lora_config.batch_size})", None, True))

    variants = [Variant(d, t) for d, t in itertools.product(dtypes, threads)]
    for dtype in dtypes[1:]:  # warm-up: the first calls of a precision's kernels are slower
        generate_base_tags(llms[dtype], timed_items[:2], replace(base_config, max_new_tokens=8))
        generate_betags(llms[dtype], pairs[:2], replace(betag_config, decoding=replace(betag_config.decoding, max_new_tokens=4)))
    measured: dict[tuple[str, Variant], Measured] = {}
    for repeat in range(args.repeats):
        for name, function, is_lora in plan:
            for variant in variants:
                if is_lora and variant.dtype == "int8":
                    continue
                if "naive" in name and repeat >= args.naive_repeats:
                    continue
                llm = llms[variant.dtype]
                torch.set_num_threads(variant.threads)
                cpu_started = cpu_time()
                if is_lora:
                    stage = lora_stage(llm, windows, tags_by_item, lora_config)
                    seconds, n, tokens, work = _lora_run(recorder, stage, shape, lora_config)
                else:
                    seconds, n, tokens, work = run_stage(recorder, lambda: function(llm))
                entry = measured.setdefault((name, variant), Measured())
                entry.seconds.append(seconds)
                entry.cpu_seconds.append(cpu_time() - cpu_started)
                entry.flops, entry.padded_flops, entry.items, entry.tokens, entry.calls = (
                    work.flops, work.padded_flops, n, tokens, work.calls
                )
                print(f"repeat {repeat + 1}: {name} [{variant.label}] {seconds:.1f} s", flush=True)

    torch.set_num_threads(max(threads))
    peak = cpu_peak()
    print(f"\nfp32 peak: {peak.formula()}")
    print(
        f"{len(timed_items)} items; naive loops on {len(naive_items)} ({args.naive_repeats} run); medians of "
        f"{args.repeats} repeats; GFLOP/CPU-s: FLOPs per second of this process's CPU time (robust to a neighbour's "
        "load, though a thread waiting for another counts)\n"
    )
    print(
        "| stage | precision | items | s (median) | items/s | tokens/s | GFLOP/s | % fp32 peak | GFLOP/CPU-s | "
        "padding | vs naive |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, _, _ in plan:
        for variant in variants:
            entry = measured.get((name, variant))
            if entry is None:
                continue
            seconds = statistics.median(entry.seconds)
            rate = entry.flops / seconds
            per_cpu = entry.flops / statistics.median(entry.cpu_seconds) / 1e9
            padding = 1 - entry.flops / entry.padded_flops if entry.padded_flops else 0.0
            naive = _naive_pair(name, plan)
            vs_naive = ""
            if naive is not None and (naive, variant) in measured:
                other = measured[(naive, variant)]
                vs_naive = f"{(entry.items / seconds) / (other.items / statistics.median(other.seconds)):.1f}x"
            print(
                f"| {name} | {variant.label} | {entry.items} | {seconds:.2f} | {entry.items / seconds:.2f} | "
                f"{entry.tokens / seconds:.0f} | {rate / 1e9:.1f} | {100 * rate / peak.flops:.1f} % | {per_cpu:.1f} | "
                f"{100 * padding:.0f} % | {vs_naive} |"
            )

    if args.agreement:
        torch.set_num_threads(max(threads))
        agreement(llms, items[: args.agreement], base_config, betag_config)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory: {peak_mib:.0f} MiB")


def _lora_run(recorder: Recorder, stage, shape: LMShape, config: LoraConfig):
    work = Work()
    recorder.current = work
    try:
        examples, _ = stage()
    finally:
        recorder.current = None
    work.flops = lora_step_flops(shape, work.train_lengths, rank=config.rank, target_modules=config.target_modules)
    work.padded_flops = 0
    return stage.step_seconds, examples, sum(work.train_lengths), work


def _naive_pair(name: str, plan) -> str | None:
    names = [n for n, _, _ in plan]
    if "naive" in name or "LoRA" in name:
        return None
    index = names.index(name)
    return names[index + 1] if index + 1 < len(names) and "naive" in names[index + 1] else None


def agreement(llms: dict[str, LoadedLLM], items, base_config: BaseTagConfig, betag_config: BetagConfig) -> None:
    """Share of items whose base-tag list, and whose BETag list, is identical to float32's."""
    base = {dtype: generate_base_tags(llm, items, base_config) for dtype, llm in llms.items()}
    pairs = [(item.item_id, tags) for item, tags in zip(items, base["float32"])]
    betags = {
        dtype: [[t.tag for t in r.tags] for r in generate_betags(llm, pairs, betag_config)] for dtype, llm in llms.items()
    }
    print(f"\nidentical to float32 on {len(items)} popular items (BETags prompted with the float32 base tags):\n")
    print("| precision | identical base-tag lists | identical BETag lists | same base-tag sets |")
    print("|---|---|---|---|")
    for dtype in llms:
        same_base = sum(a == b for a, b in zip(base[dtype], base["float32"]))
        same_sets = sum(set(a) == set(b) for a, b in zip(base[dtype], base["float32"]))
        same_betags = sum(a == b for a, b in zip(betags[dtype], betags["float32"]))
        n = len(items)
        print(f"| {dtype} | {same_base}/{n} ({100 * same_base / n:.0f} %) | {same_betags}/{n} "
              f"({100 * same_betags / n:.0f} %) | {same_sets}/{n} |")


if __name__ == "__main__":
    main()
