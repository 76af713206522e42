"""Behavior-enhanced finetuning: windows, tag subsets, answer-only loss, a LoRA that learns."""

import random
from dataclasses import replace

import polars as pl
import pytest
import torch

from dagster_betag.llm.behavior import answer_text
from dagster_betag.llm.finetune import (
    IGNORE_INDEX,
    WINDOW_SCHEMA,
    LoraConfig,
    Window,
    WindowConfig,
    build_windows,
    encode_example,
    sample_tags,
    target_tags,
    train_lora,
)
from dagster_betag.llm.tags import format_tags

SESSIONS = [(f"u{u}-1-1", [f"i{(u * 7 + k) % 30}" for k in range(12)]) for u in range(40)]
ALL_ITEMS = {f"i{i}" for i in range(30)}


def test_windows_respect_bounds_skip_untagged_items_and_hold_out_whole_sessions():
    tagged = ALL_ITEMS - {"i3"}
    config = WindowConfig(window_items=5, min_items=3, max_examples=None, validation_share=0.2, seed=1, one_item_share=0)
    windows = build_windows(SESSIONS, tagged, config)
    assert windows and all(2 <= len(w.context_item_ids) <= 4 for w in windows)
    assert all("i3" not in (*w.context_item_ids, w.target_item_id) for w in windows)
    by_session: dict[str, set[bool]] = {}
    for window in windows:
        by_session.setdefault(window.session_id, set()).add(window.is_validation)
    assert all(len(flags) == 1 for flags in by_session.values())
    assert {True, False} == {next(iter(flags)) for flags in by_session.values()}
    # the window is the items right before the target, in session order
    session = dict(SESSIONS)[windows[0].session_id]
    kept = [item for item in session if item in tagged]
    end = kept.index(windows[0].target_item_id)
    assert list(windows[0].context_item_ids) == kept[max(0, end - 4) : end]


def test_windows_are_sampled_reproducibly():
    config = WindowConfig(max_examples=25, seed=3)
    first = build_windows(SESSIONS, ALL_ITEMS, config)
    assert len(first) == 25 and first == build_windows(SESSIONS, ALL_ITEMS, config)
    assert first != build_windows(SESSIONS, ALL_ITEMS, WindowConfig(max_examples=25, seed=4))


def test_one_item_share_gives_that_share_of_one_item_windows_of_consecutive_items():
    config = WindowConfig(window_items=5, min_items=3, max_examples=40, one_item_share=0.25, seed=2)
    windows = build_windows(SESSIONS, ALL_ITEMS, config)
    one_item = [w for w in windows if len(w.context_item_ids) == 1]
    assert len(windows) == 40 and len(one_item) == 10
    sessions = dict(SESSIONS)
    for window in one_item:
        session = sessions[window.session_id]
        assert session[session.index(window.context_item_ids[0]) + 1] == window.target_item_id
    longer_only = build_windows(SESSIONS, ALL_ITEMS, WindowConfig(max_examples=40, one_item_share=0))
    assert not [w for w in longer_only if len(w.context_item_ids) == 1]


def test_union_targets_take_the_next_items_and_rank_shared_tags_first():
    config = WindowConfig(window_items=4, min_items=3, max_examples=None, target_items=3)
    windows = build_windows(SESSIONS[:1], ALL_ITEMS, config)
    session = SESSIONS[0][1]
    for window in windows:
        end = session.index(window.target_item_id)
        assert window.target_item_ids() == tuple(session[end : end + 3])
    last = max(windows, key=lambda window: session.index(window.target_item_id))
    assert last.target_item_id == session[-1] and last.later_item_ids == ()  # nothing comes after it
    assert target_tags([["a", "b", "c"], ["c", "d"], ["d", "c", "e"]], 4) == ["c", "d", "a", "b"]
    assert target_tags([["a", "b"]], 8) == ["a", "b"]


def test_recency_weight_draws_recent_sessions_more_often():
    recency = {session_id: index / (len(SESSIONS) - 1) for index, (session_id, _) in enumerate(SESSIONS)}
    late = {session_id for session_id, rank in recency.items() if rank >= 0.5}

    def late_share(strength: float) -> float:
        config = WindowConfig(window_items=4, min_items=3, max_examples=60, recency_weight=strength)
        windows = build_windows(SESSIONS, ALL_ITEMS, config, recency)
        return sum(w.session_id in late for w in windows) / len(windows)

    assert late_share(4.0) > late_share(0.0) + 0.2


def test_tag_subsets_keep_80_to_100_percent_in_order():
    tags = [f"t{i}" for i in range(10)]
    rng = random.Random(0)
    for _ in range(200):
        subset = sample_tags(tags, rng, 0.8)
        assert 8 <= len(subset) <= 10 and subset == [t for t in tags if t in subset]


def test_loss_covers_the_answer_tokens_only(tiny_llm):
    tokenizer = tiny_llm.tokenizer
    context, target = [["space opera", "rebellion"], ["heist", "dark comedy"]], ["time travel", "romance"]
    example = encode_example(tokenizer, context, target, max_length=512)
    answer_ids = [token for token, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert example.labels[: len(example.labels) - len(answer_ids)] == [IGNORE_INDEX] * (len(example.labels) - len(answer_ids))
    assert tokenizer.decode(answer_ids) == answer_text(tokenizer, context, target)
    assert tokenizer.decode(answer_ids).startswith(format_tags(target))


def test_too_long_examples_drop_the_oldest_items_first(tiny_llm):
    tokenizer = tiny_llm.tokenizer
    context = [[f"tag {i} alpha", f"tag {i} beta"] for i in range(12)]
    full = encode_example(tokenizer, context, ["target tag"], max_length=4096)
    short = encode_example(tokenizer, context, ["target tag"], max_length=len(full.input_ids) - 20)
    assert len(short.input_ids) <= len(full.input_ids) - 20
    text = tokenizer.decode(short.input_ids)
    assert "tag 11 alpha" in text and "tag 0 alpha" not in text and text.endswith(tokenizer.decode(full.input_ids[-5:]))


def test_windows_round_trip_through_their_parquet_frame(tmp_path):
    config = WindowConfig(window_items=4, min_items=3, max_examples=None, target_items=2, validation_share=0.3)
    windows = build_windows(SESSIONS[:5], ALL_ITEMS, config)
    assert any(w.later_item_ids for w in windows) and any(len(w.context_item_ids) > 1 for w in windows)
    assert any(w.is_validation for w in windows) and not all(w.is_validation for w in windows)
    path = tmp_path / "finetune_examples.parquet"
    Window.to_frame(windows).write_parquet(path)
    frame = pl.read_parquet(path)
    assert dict(frame.schema) == WINDOW_SCHEMA  # the columns llm/finetune_examples writes, in order
    assert Window.from_frame(frame) == windows
    assert Window.to_frame([]).schema == Window.to_frame(windows).schema
    # a frame written before later_item_ids existed reads as windows without later items
    assert all(w.later_item_ids == () for w in Window.from_frame(frame.drop("later_item_ids")))


def test_lora_learns_the_windows_and_leaves_base_weights_untouched(tiny_llm):
    tags = {item: [f"{item} mood", f"{item} theme", "shared tag"] for item in ALL_ITEMS}
    windows = build_windows(SESSIONS[:6], ALL_ITEMS, WindowConfig(window_items=4, max_examples=8, validation_share=0.0))
    base_before = {n: p.detach().clone() for n, p in tiny_llm.model.named_parameters()}
    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    config = LoraConfig(target_modules=modules, epochs=10, learning_rate=5e-2, warmup_steps=1, batch_size=4, min_tag_share=1.0)
    result = train_lora(tiny_llm, windows, tags, config)
    assert result.n_train_examples == len(windows) and len(result.step_losses) == 20
    assert sum(result.step_losses[-2:]) < 0.8 * sum(result.step_losses[:2]), result.step_losses
    for name, parameter in result.model.named_parameters():
        if "lora_" not in name:
            original = name.replace("base_model.model.", "").replace(".base_layer", "")
            # stored in the precision the products run in (bfloat16 on a CPU with bf16 dot products), else as they were
            assert torch.equal(parameter, base_before[original].to(parameter.dtype)), name


def _full_logits_loss_and_grads(llm, batch):
    """The first version's loss: the model's own loss over (batch, length, vocabulary) logits."""
    from dagster_betag.llm.lora_loss import IGNORE_INDEX as IGNORE

    width = max(len(e.input_ids) for e in batch)
    pad = llm.tokenizer.pad_token_id
    ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in batch])
    labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in batch])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch])
    llm.model.zero_grad()
    loss = llm.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in llm.model.parameters()]


def test_cheap_loss_paths_give_the_full_logits_loss_and_gradients(tiny_llm):
    """Answer logits only, a shared prefix and micro-batches change the cost, not the loss or
    its gradient: each switch, and all together, against the model's own full-logits loss."""
    from dataclasses import replace

    from dagster_betag.llm.lora_loss import batch_loss, micro_batches
    from dagster_betag.llm.prefix import shared_prefix_length

    rng = random.Random(3)
    words = ["love", "war", "family", "space", "crime", "music", "robots", "summer"]
    batch = [
        encode_example(tiny_llm.tokenizer, [rng.sample(words, 3) for _ in range(n)], rng.sample(words, 4), 256)
        for n in (1, 1, 2, 3)
    ]
    tiny_llm.model.train(False)
    for parameter in tiny_llm.model.parameters():
        parameter.requires_grad_(True)
    reference_loss, reference_grads = _full_logits_loss_and_grads(tiny_llm, batch)
    first_version = LoraConfig(
        answer_logits_only=False, share_prompt_prefix=False, max_batch_tokens=None, compute_dtype="float32"
    )
    switches = [{"answer_logits_only": True}, {"share_prompt_prefix": True}, {"max_batch_tokens": 90}]
    for changes in [{}, *switches, {k: v for s in switches for k, v in s.items()}]:
        config = replace(first_version, **changes)
        tiny_llm.model.zero_grad()
        loss = batch_loss(tiny_llm.model, batch, tiny_llm, config, backward_weight=1.0)
        assert abs(loss - reference_loss) < 1e-5, changes
        for grad, reference in zip((p.grad for p in tiny_llm.model.parameters()), reference_grads, strict=True):
            torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-6)
    assert len(micro_batches(batch, replace(first_version, max_batch_tokens=90))) > 1  # the budget did split it
    assert shared_prefix_length([e.input_ids for e in batch]) > 20  # the instruction is shared


def test_per_item_examples_answer_with_the_behavior_target_and_hold_out_items(tiny_llm):
    targets = {f"i{i}": [f"i{(i + 1) % 30} mood", "shared tag"] for i in range(30) if i != 5}
    config = WindowConfig(examples="items", validation_share=0.3, max_examples=10)
    per_item = build_windows(SESSIONS, ALL_ITEMS - {"i7"}, config, targets=targets)
    # every tagged item with a target, none sampled away: not i5 (no target), not i7 (no tags)
    assert sorted(w.target_item_id for w in per_item) == sorted(set(targets) - {"i7"})
    assert all(w.is_item_target and w.context_item_ids == (w.target_item_id,) for w in per_item)
    assert any(w.is_validation for w in per_item) and not all(w.is_validation for w in per_item)
    both = build_windows(SESSIONS, ALL_ITEMS - {"i7"}, replace(config, examples="both"), targets=targets)
    assert len(both) == len(per_item) + 10 and sum(w.is_item_target for w in both) == len(per_item)
    assert Window.from_frame(Window.to_frame(both)) == both
    # the answer of a per-item example is the item's target, not a successor's tags
    from dagster_betag.llm.finetune import _encoder

    tags = {item: [f"{item} own"] for item in ALL_ITEMS}
    example = next(w for w in per_item if w.target_item_id == "i3")
    encoded = _encoder(tiny_llm.tokenizer, tags, targets, None, LoraConfig(min_tag_share=1.0))(example, None)
    answer = tiny_llm.tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    assert answer.startswith("i4 mood, shared tag") and "i3 own" in tiny_llm.tokenizer.decode(encoded.input_ids)


def test_early_stopping_keeps_the_best_epoch_and_the_fit_curve_is_recorded(tiny_llm, tmp_path):
    from dagster_betag.llm.pipeline import finetune_run

    tags = {item: [f"{item} mood", f"{item} theme", "shared tag"] for item in ALL_ITEMS}
    targets = {item: [f"i{(int(item[1:]) + 1) % 30} mood"] for item in ALL_ITEMS}
    windows = build_windows(SESSIONS[:8], ALL_ITEMS, WindowConfig(examples="items", validation_share=0.3), targets=targets)
    # a learning rate far too high: the validation loss gets worse after a while, and training stops
    config = LoraConfig(
        epochs=6, learning_rate=0.5, warmup_steps=1, batch_size=8, early_stopping_patience=1, fit_curve_items=3
    )
    artifact = finetune_run(
        tiny_llm, windows, tags, config,
        targets_by_item=targets, titles=None, adapters_dir=tmp_path, data_fingerprint="test", log=lambda _: None,
    )  # fmt: skip
    epochs = artifact.manifest["epochs"]
    best = artifact.manifest["best_epoch"]
    losses = [record["validation_loss"] for record in epochs]
    assert epochs[0]["epoch"] == 0 and {"in_sample_fit", "in_sample_fit_of_other_items", "beam_jaccard", "n_fit_items"} <= set(epochs[0])
    assert epochs[0]["n_fit_items"] == 3 and artifact.fit_png and (artifact.folder / "fit_curve.png").is_file()
    assert losses[best] == min(losses) == artifact.manifest["validation_loss_after"]
    # stopped one epoch after the best, unless the best was the last allowed
    assert len(epochs) - 1 == min(best + 1, 6), losses


def test_the_title_writing_puts_each_item_title_before_its_tags(tiny_llm):
    from dagster_betag.llm.behavior import prompt_text

    tokenizer = tiny_llm.tokenizer
    with_titles = prompt_text(tokenizer, [["toys", "friendship"], ["space"]], ["Toy Story", "Alien"])
    assert "1. Toy Story: toys, friendship\n2. Alien: space" in with_titles
    assert "1. toys, friendship\n2. space" in prompt_text(tokenizer, [["toys", "friendship"], ["space"]])
    example = encode_example(tokenizer, [["toys"]], ["space"], 256, ["Toy Story"])
    assert "Toy Story: toys" in tokenizer.decode(example.input_ids)
    with pytest.raises(ValueError, match="needs the items' titles"):
        train_lora(tiny_llm, [], {}, LoraConfig(item_writing="title_and_tags"))
    with pytest.raises(ValueError, match="unknown item writing"):
        LoraConfig(item_writing="titles only")
