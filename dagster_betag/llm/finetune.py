"""Behavior-enhanced finetuning: LoRA on next-item tag prediction.

From train-only behavior sessions, each window of consecutive items becomes one example:
the context items written as their base tags (optionally after their titles), the target the
next item's tags (or the union of the next few items' tags). A BETag prompt holds one item,
so a configurable share of the examples has exactly that shape: one item, then the next.
Per-item examples (``WindowConfig.examples``) ask, for every item with train successors,
for its behavior target (``llm/fit.py``): what its successors' base tags say, weighted by
transitions. Each
epoch redraws a random 80-100 % subset of every item's tags (as the official
configuration does), so the model learns from tag sets, not from one fixed string. The
loss covers the answer tokens only.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl
import torch

from dagster_betag.knobs import knob
from dagster_betag.llm.fit import TARGET_WEIGHTINGS
from dagster_betag.llm.behavior import (
    DEFAULT_ITEM_WRITING,
    ITEM_WRITINGS,
    answer_text,
    item_writing_named,
    prompt_text,
)
from dagster_betag.llm.lora_loss import COMPUTE_DTYPES, IGNORE_INDEX, EncodedExample, autocast_dtype, batch_loss

# what the finetuning examples are: session windows, one behavior-target example per item, or both
EXAMPLE_KINDS = ("windows", "items", "both")

@dataclass(frozen=True)
class WindowConfig:
    """How behavior sessions are cut into finetuning examples."""

    window_items: int = knob(15, "Items per finetuning window at most, target included.")
    min_items: int = knob(3, "Items of the shortest multi-item window, target included.")
    max_examples: int | None = knob(200, "Windows sampled from all windows (CPU budget); null keeps every window.")
    validation_share: float = knob(0.05, "Share of the sessions held out for the validation loss.")
    seed: int = knob(0, "Seed of the validation split and of the sample.")
    one_item_share: float = knob(
        0.75,
        "Share of the sampled examples whose context is the one item right before the target: the shape of a BETag "
        "prompt (otherwise the model only ever sees contexts of min_items - 1 or more); one-item examples are also "
        "about 3 times cheaper to train on.",
    )
    target_items: int = knob(
        1,
        "The answer is the union of the tags of the next target_items items (1: the next item only), most shared "
        "tags first, at most LoraConfig.max_answer_tags of them.",
    )
    examples: str = knob(
        "windows",
        "windows: next-item windows of the behavior sessions (sampled down to max_examples); items: one example per "
        "item with train successors, the item alone as context and its behavior target as answer (its successors' "
        "base tags weighted by transitions, llm/fit.py), every such item, held-out items by validation_share; both: "
        "the two together.",
    )
    recency_weight: float = knob(
        0.0,
        "Windows are sampled with weight exp(recency_weight * r), r in [0, 1] the rank of the session's end among "
        "all sessions (1 = the latest): 0 samples uniformly, 2 makes the latest sessions e^2 = 7.4 times as likely "
        "as the oldest.",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.one_item_share <= 1.0:
            raise ValueError("one_item_share must be between 0 and 1")
        if self.target_items < 1:
            raise ValueError("target_items must be at least 1")
        if self.examples not in EXAMPLE_KINDS:
            raise ValueError(f"examples must be one of {', '.join(EXAMPLE_KINDS)}, not {self.examples!r}")


# the Parquet schema of llm/finetune_examples: one row per Window
WINDOW_SCHEMA = {
    "example_id": pl.Utf8,
    "session_id": pl.Utf8,
    "context_item_ids": pl.List(pl.Utf8),
    "target_item_id": pl.Utf8,
    "is_validation": pl.Boolean,
    "later_item_ids": pl.List(pl.Utf8),
    "is_item_target": pl.Boolean,
}


@dataclass(frozen=True)
class Window:
    example_id: str
    session_id: str
    context_item_ids: tuple[str, ...]
    target_item_id: str
    is_validation: bool
    later_item_ids: tuple[str, ...] = ()  # the items after the target whose tags join the answer
    is_item_target: bool = False  # a per-item example: the answer is the context item's behavior target

    def target_item_ids(self) -> tuple[str, ...]:
        return (self.target_item_id, *self.later_item_ids)

    @staticmethod
    def to_frame(windows: Sequence[Window]) -> pl.DataFrame:
        """One row per window, in ``WINDOW_SCHEMA`` (item id tuples as lists)."""
        return pl.DataFrame(
            {
                "example_id": [w.example_id for w in windows],
                "session_id": [w.session_id for w in windows],
                "context_item_ids": [list(w.context_item_ids) for w in windows],
                "target_item_id": [w.target_item_id for w in windows],
                "is_validation": [w.is_validation for w in windows],
                "later_item_ids": [list(w.later_item_ids) for w in windows],
                "is_item_target": [w.is_item_target for w in windows],
            },
            schema=WINDOW_SCHEMA,
        )

    @staticmethod
    def from_frame(frame: pl.DataFrame) -> list[Window]:
        """The windows of a frame written by ``to_frame``, in row order; a frame from before
        ``later_item_ids`` or ``is_item_target`` existed reads as windows without later items
        and without per-item examples."""
        return [
            Window(
                row["example_id"],
                row["session_id"],
                tuple(row["context_item_ids"]),
                row["target_item_id"],
                row["is_validation"],
                tuple(row.get("later_item_ids") or ()),
                bool(row.get("is_item_target")),
            )
            for row in frame.iter_rows(named=True)
        ]


def build_windows(
    sessions: Sequence[tuple[str, Sequence[str]]],
    tagged_items: set[str],
    config: WindowConfig,
    recency: Mapping[str, float] | None = None,
    targets: Mapping[str, Sequence[str]] | None = None,
) -> list[Window]:
    """Windows ending at each position of each session, sampled down to ``max_examples``:
    ``one_item_share`` of them one-item windows, the rest windows of ``min_items`` or more;
    with ``config.examples`` items or both, one per-item example for each tagged item with a
    behavior target in ``targets`` (item -> target tags), validation chosen per item.

    Items without base tags are skipped in their session (they cannot be written as
    tags). Validation is chosen per session, by a hash, so its windows never share
    behavior with training windows. ``recency`` (session id -> rank of its end in [0, 1])
    weighs the sample toward recent sessions when ``config.recency_weight`` is set.
    """
    per_item = item_examples(targets or {}, tagged_items, config) if config.examples != "windows" else []
    if config.examples == "items":
        return per_item
    one_item: list[Window] = []
    longer: list[Window] = []
    for session_id, item_ids in sessions:
        items = [item for item in item_ids if item in tagged_items]
        is_validation = _unit_hash(f"{config.seed}:{session_id}") < config.validation_share
        for end in range(1, len(items)):
            later = tuple(items[end + 1 : end + config.target_items])
            if config.one_item_share > 0:
                one_item.append(
                    Window(f"{session_id}:{end}:1", session_id, (items[end - 1],), items[end], is_validation, later)
                )
            if end >= config.min_items - 1:
                start = max(0, end - config.window_items + 1)
                context = tuple(items[start:end])
                longer.append(Window(f"{session_id}:{end}", session_id, context, items[end], is_validation, later))
    if config.max_examples is None:
        windows = longer + one_item
    else:
        n_one_item = round(config.max_examples * config.one_item_share)
        rng = random.Random(config.seed)
        weight = _recency_weights(recency or {}, config.recency_weight)
        windows = _weighted_sample(one_item, n_one_item, weight, rng) + _weighted_sample(
            longer, config.max_examples - n_one_item, weight, rng
        )
    return sorted(windows + per_item, key=lambda window: window.example_id)


def item_examples(
    targets: Mapping[str, Sequence[str]], tagged_items: set[str], config: WindowConfig
) -> list[Window]:
    """One per-item example for each tagged item with a non-empty behavior target; an item is
    held out for validation by a hash of its id, so early stopping watches unseen items."""
    return [
        Window(
            f"item:{item}",
            f"item:{item}",
            (item,),
            item,
            _unit_hash(f"{config.seed}:item:{item}") < config.validation_share,
            is_item_target=True,
        )
        for item in sorted(targets)
        if item in tagged_items and targets[item]
    ]


def _recency_weights(recency: Mapping[str, float], strength: float) -> Callable[[Window], float]:
    return lambda window: math.exp(strength * recency.get(window.session_id, 1.0)) if strength else 1.0


def _weighted_sample(
    windows: list[Window], n: int, weight: Callable[[Window], float], rng: random.Random
) -> list[Window]:
    """``n`` windows without replacement, each drawn with probability proportional to its
    weight (Efraimidis-Spirakis: the n largest keys u^(1/w)); uniform when all weights are equal."""
    if len(windows) <= n:
        return list(windows)
    keys = [rng.random() ** (1.0 / weight(window)) for window in windows]
    chosen = sorted(range(len(windows)), key=keys.__getitem__, reverse=True)[:n]
    return [windows[index] for index in chosen]


def target_tags(tag_lists: Sequence[Sequence[str]], max_tags: int) -> list[str]:
    """The answer for one or more target items: their tags' union, tags shared by more of the
    items first, then in order of first appearance; one list comes back as it is (capped)."""
    count: dict[str, int] = {}
    for tags in tag_lists:
        for tag in dict.fromkeys(tags):
            count[tag] = count.get(tag, 0) + 1
    first_seen = {tag: order for order, tag in enumerate(count)}
    return sorted(count, key=lambda tag: (-count[tag], first_seen[tag]))[:max_tags]


def _unit_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def sample_tags(tags: Sequence[str], rng: random.Random, min_share: float) -> list[str]:
    """A random subset of ``tags`` keeping between min_share and all of them, in their order."""
    if not tags:
        return []
    n_keep = max(1, math.ceil(len(tags) * rng.uniform(min_share, 1.0)))
    kept = set(rng.sample(range(len(tags)), n_keep))
    return [tag for index, tag in enumerate(tags) if index in kept]


def encode_example(
    tokenizer,
    context_tags: Sequence[Sequence[str]],
    target_tags: Sequence[str],
    max_length: int,
    titles: Sequence[str] | None = None,
) -> EncodedExample:
    """Tokenize prompt and answer apart, so the prompt is masked exactly as generation sees it.

    When too long, the oldest context items are dropped first: the latest behavior
    matters most, and the answer must stay whole.
    """
    context = list(context_tags)
    named = None if titles is None else list(titles)  # (context items,) titles, aligned with context
    while True:
        prompt_ids = tokenizer(prompt_text(tokenizer, context, named), add_special_tokens=False).input_ids
        answer = answer_text(tokenizer, context, target_tags, named)
        answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
        if len(prompt_ids) + len(answer_ids) <= max_length or len(context) <= 1:
            break
        context, named = context[1:], None if named is None else named[1:]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return EncodedExample(input_ids, labels)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA and optimisation knobs; the defaults fit a 2-core CPU budget."""

    rank: int = knob(16, "LoRA rank r of the adapter matrices.")
    alpha: int = knob(32, "LoRA alpha: the adapter's update is scaled by alpha / rank.")
    dropout: float = knob(0.05, "Dropout on the adapter's input.")
    target_modules: tuple[str, ...] = knob(
        ("q_proj", "k_proj", "v_proj", "o_proj"), "The linear layers that get an adapter."
    )
    epochs: int = knob(1, "Passes over the training windows.")
    learning_rate: float = knob(5e-4, "AdamW learning rate after warmup, then decayed linearly to 0.")
    warmup_steps: int = knob(10, "Optimizer steps of linear warmup.")
    batch_size: int = knob(8, "Examples per batch (batched by similar length).")
    gradient_accumulation: int = knob(1, "Batches per optimizer step.")
    max_batch_tokens: int | None = knob(
        1024,
        "A batch runs through the model in micro-batches of at most this many tokens (rows x padded length; one row "
        "at least), their gradients summed with weights that make the step the same as one pass over the whole "
        "batch: this bounds the activation memory whatever the window lengths; null runs each batch whole.",
    )
    answer_logits_only: bool = knob(
        True,
        "Compute the output projection and the loss at answer positions only (the loss covers nothing else); "
        "false computes the (batch, length, vocabulary) logits of every position, as the first version did.",
    )
    compute_dtype: str = knob(
        "auto",
        "Precision of the matrix products of the forward and backward passes (torch.autocast; the adapter weights, "
        "gradients and optimizer stay float32): auto = bfloat16 on CUDA and on CPUs with bf16 dot products "
        "(AVX512_BF16, AMX), else float32; float32; bfloat16.",
    )
    share_prompt_prefix: bool = knob(
        True,
        "Run the prompt prefix every example starts with (the behavior instruction) once per micro-batch, its "
        "key/value cache shared by the rows (same loss, gradients through it); false runs every example whole.",
    )
    max_length: int = knob(384, "Tokens per example at most; the oldest context items are dropped first.")
    min_tag_share: float = knob(0.8, "Each item keeps a random min_tag_share-100 % of its tags per epoch.")
    max_answer_tags: int = knob(8, "Tags per answer at most: as many as a BETag beam may write (max_tags_per_beam).")
    target_weighting: str = knob(
        "transitions",
        "How the behavior target that per-item examples answer with weighs its successors' tags (llm/fit.py): "
        "transitions; transitions_idf, times ln(N / items whose base tags hold the tag), so generic tags stop "
        "filling every target. The fit curve measures against these targets.",
    )
    item_writing: str = knob(
        DEFAULT_ITEM_WRITING,
        "How the behavior prompt writes an item, in finetuning and (read from the adapter) in BETag generation: "
        + "; ".join(f"{w.name}: {w.description}" for w in ITEM_WRITINGS.values())
        + ".",
    )
    early_stopping_patience: int | None = knob(
        None,
        "Stop after this many epochs without a lower validation loss and keep the adapter of the best epoch "
        "(the validation loss is measured after every epoch); null trains every epoch and keeps the last.",
    )
    fit_curve_items: int = knob(
        0,
        "Training items with a behavior target whose beams are decoded before training and after every epoch "
        "(4 groups of 1 beam) to measure the in-sample fit (llm/fit.py): the fit curve; 0 measures none.",
    )
    seed: int = knob(0, "Seed of the adapter's initialization, the tag sampling and the batch order.")

    def __post_init__(self) -> None:
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, not {self.compute_dtype!r}")
        item_writing_named(self.item_writing)
        if self.target_weighting not in TARGET_WEIGHTINGS:
            raise ValueError(f"target_weighting must be one of {', '.join(TARGET_WEIGHTINGS)}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError("early_stopping_patience must be at least 1 (or null)")


@dataclass
class TrainingResult:
    model: torch.nn.Module  # the peft model, adapter weights trained
    step_losses: list[float] = field(default_factory=list)  # mean train loss per optimizer step
    validation_loss_before: float = float("nan")
    validation_loss_after: float = float("nan")
    n_train_examples: int = 0
    n_validation_examples: int = 0
    seconds: float = 0.0
    # one record per measured epoch (0: before training): "epoch", "validation_loss", and what
    # on_epoch measured (the fit curve)
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0  # the epoch whose adapter was kept


def train_lora(
    llm,
    windows: Sequence[Window],
    tags_by_item: Mapping[str, Sequence[str]],
    config: LoraConfig,
    *,
    targets_by_item: Mapping[str, Sequence[str]] | None = None,
    titles: Mapping[str, str] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[torch.nn.Module], dict] | None = None,
) -> TrainingResult:
    """Attach a LoRA adapter to ``llm.model`` and train it on the windows. With a bfloat16
    ``compute_dtype``, the frozen weights of ``llm.model`` are stored in bfloat16 from then on.

    ``targets_by_item``: the behavior targets per-item examples answer with; ``titles``: item
    titles, required by an ``item_writing`` with titles. ``on_step(step, total_steps, loss)``
    reports progress; ``on_epoch(model)``, called before training and after each epoch with the
    model in eval mode (under the compute dtype's autocast), returns measurements to record.
    The validation loss uses every tag of every item (no sampling), so epochs are comparable.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    peft_model = get_peft_model(
        llm.model,
        PeftLoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    fast_dtype = autocast_dtype(config.compute_dtype, llm.device)
    if fast_dtype is not None:
        # the frozen weights are only ever used in fast_dtype: store them so, not as float32 plus a
        # cast copy per forward (the adapter's trained weights stay float32)
        for parameter in peft_model.parameters():
            if not parameter.requires_grad:
                parameter.data = parameter.data.to(fast_dtype)
    train = [w for w in windows if not w.is_validation]
    validation = [w for w in windows if w.is_validation]
    encode = _encoder(llm.tokenizer, tags_by_item, targets_by_item or {}, titles, config)
    validation_examples = [encode(w, None) for w in validation]
    result = TrainingResult(peft_model, n_train_examples=len(train), n_validation_examples=len(validation))

    def measure(epoch: int) -> float:
        loss = _mean_loss(peft_model, validation_examples, config, llm)
        record = {"epoch": epoch, "validation_loss": loss}
        if on_epoch:
            device_type = torch.device(llm.device).type
            with torch.autocast(device_type, dtype=fast_dtype or torch.float32, enabled=fast_dtype is not None):
                record |= on_epoch(peft_model)
        result.epochs.append(record)
        return loss

    result.validation_loss_before = best_loss = measure(0)
    trained = [p for p in peft_model.parameters() if p.requires_grad]
    best_weights = [p.detach().clone() for p in trained]

    steps_per_epoch = math.ceil(len(train) / (config.batch_size * config.gradient_accumulation))
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(trained, lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_linear(config.warmup_steps, total_steps))
    step = 0
    for epoch in range(config.epochs):
        peft_model.train()
        rng = random.Random(f"{config.seed}:{epoch}")
        order = rng.sample(train, len(train))
        examples = [encode(window, rng) for window in order]
        batches = length_grouped_batches(examples, config.batch_size, rng)
        for first in range(0, len(batches), config.gradient_accumulation):
            group = batches[first : first + config.gradient_accumulation]
            losses = [batch_loss(peft_model, batch, llm, config, backward_weight=1 / len(group)) for batch in group]
            torch.nn.utils.clip_grad_norm_(peft_model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            result.step_losses.append(sum(losses) / len(losses))
            if on_step:
                on_step(step, total_steps, result.step_losses[-1])
        loss = measure(epoch + 1)
        # without validation examples the loss is nan, which counts as better: the last epoch is kept
        if not loss >= best_loss or config.early_stopping_patience is None:
            best_loss, result.best_epoch = loss, epoch + 1
            best_weights = [p.detach().clone() for p in trained]
        elif epoch + 1 - result.best_epoch >= config.early_stopping_patience:
            break
    with torch.no_grad():
        for parameter, weights in zip(trained, best_weights, strict=True):
            parameter.copy_(weights)
    peft_model.eval()
    result.validation_loss_after = result.epochs[result.best_epoch]["validation_loss"]
    result.seconds = time.perf_counter() - started
    return result


def length_grouped_batches(
    examples: Sequence[EncodedExample], batch_size: int, rng: random.Random
) -> list[list[EncodedExample]]:
    """Batches of examples of similar length, in random order: a batch is padded to its longest
    example, so mixing one-item windows (~110 tokens) with 15-item ones (~380) would make the
    short ones cost as much as the long ones (transformers' ``group_by_length``)."""
    ordered = sorted(examples, key=lambda example: len(example.input_ids))
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return rng.sample(batches, len(batches))


def _encoder(
    tokenizer,
    tags_by_item: Mapping[str, Sequence[str]],
    targets_by_item: Mapping[str, Sequence[str]],
    titles: Mapping[str, str] | None,
    config: LoraConfig,
):
    with_title = item_writing_named(config.item_writing).with_title
    if with_title and titles is None:
        raise ValueError(f"item_writing {config.item_writing!r} needs the items' titles")

    def encode(window: Window, rng: random.Random | None) -> EncodedExample:
        def sampled(full: Sequence[str]) -> Sequence[str]:
            return full if rng is None else sample_tags(full, rng, config.min_tag_share)

        context = [sampled(tags_by_item[item]) for item in window.context_item_ids]
        if window.is_item_target:
            answer = list(sampled(targets_by_item[window.target_item_id]))[: config.max_answer_tags]
        else:
            answers = [sampled(tags_by_item[item]) for item in window.target_item_ids()]
            answer = target_tags(answers, config.max_answer_tags)
        named = [titles[item] for item in window.context_item_ids] if with_title else None
        return encode_example(tokenizer, context, answer, config.max_length, named)

    return encode


def _warmup_then_linear(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


@torch.no_grad()
def _mean_loss(model, examples: Sequence[EncodedExample], config: LoraConfig, llm) -> float:
    """Mean cross-entropy per answer token over ``examples``, in batches of ``batch_size``."""
    if not examples:
        return float("nan")
    model.eval()
    total, weight = 0.0, 0
    for first in range(0, len(examples), config.batch_size):
        batch = examples[first : first + config.batch_size]
        n_answer_tokens = sum(example.n_answer_tokens for example in batch)
        total += batch_loss(model, batch, llm, config) * n_answer_tokens
        weight += n_answer_tokens
    return total / weight
