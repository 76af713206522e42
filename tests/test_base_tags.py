"""Base-tag prompts and generation: batching, order, stopping, repetition control.

Fast tests run on a tiny random-weight Llama with a tokenizer trained in the test; a
"scripted" variant of it adds a large bonus to a planned answer, so generate() with the real
processors, cache and padding writes known lists. One bounded test uses the real model.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from transformers import LlamaForCausalLM

from dagster_betag.llm.base_tags import (
    BaseTagConfig,
    catalog_attribute_values,
    generate_base_tag_texts,
    generate_base_tags,
)
from dagster_betag.llm.greedy import repetition_ban
from dagster_betag.llm.rules.entries import EnoughTags, EntryTracker, LowercaseOnly
from dagster_betag.llm.tokens import token_table
from dagster_betag.llm.model import LLMConfig, LoadedLLM, load_llm
from dagster_betag.llm.prefix import split_shared_prefix
from dagster_betag.llm.prompts import (
    BASE_TAG_PROMPT_VERSION,
    DEFAULT_FEW_SHOT,
    ItemDescription,
    apply_chat,
    base_tag_messages,
    base_tag_prompt,
    catalog_few_shot,
    describe_item,
)
from dagster_betag.llm.tagger import BaseTagContext
from tests.test_llm_model import build_tokenizer
from tests.tiny_models import tiny_llama

pytestmark = pytest.mark.heavy

ITEMS = [
    ItemDescription("1", "Toy Story", None, {"year": ["1995"], "genre": ["Adventure", "Comedy"]}),
    ItemDescription("2", "Matrix", "A hacker learns the truth.", {"year": ["1999"], "genre": ["Action", "Sci-Fi"]}),
    ItemDescription("3", "Pulp Fiction", None, {"genre": ["Crime"]}),
    ItemDescription("4", "Forrest Gump", None, {"year": ["1994"], "genre": ["Comedy", "Drama", "Romance", "War"]}),
    ItemDescription("5", "Heist", None, {}),
]
# what the scripted model answers for each title (more entries than any test asks for)
SCRIPTS = {
    "Toy Story": ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"],
    "Matrix": ["space", "heist", "love", "war", "winter", "island"],
    "Pulp Fiction": ["witty", "tragedy", "epic", "island", "winter", "love"],
    "Forrest Gump": ["sigma", "omega", "kappa", "lambda", "iota", "theta"],
    "Heist": ["small town", "time loop", "theme park", "dinosaurs", "shipwreck", "eta"],
}


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tokenizer()
    tok.padding_side = "left"
    return tok


@pytest.fixture(scope="module")
def tiny_llm(tokenizer):
    model = tiny_llama(tokenizer, init_std=0.3, seed=3)
    return LoadedLLM(model=model, tokenizer=tokenizer, name="tiny", fingerprint="0" * 16, device="cpu")


class ScriptedLlama(LlamaForCausalLM):
    """A tiny random Llama that, on top of its own logits, strongly prefers a planned answer.

    The plan of each row is read from its prompt (the title it contains) at prefill; then one
    planned token per decoding step. Banned tokens (-inf) still lose, so bans are visible.
    """

    def setup(self, tokenizer, scripts: dict[str, str]):
        self._tokenizer, self._scripts, self._plans, self._step = tokenizer, scripts, [], 0
        return self

    def forward(self, input_ids=None, past_key_values=None, **kwargs):
        output = super().forward(input_ids=input_ids, past_key_values=past_key_values, **kwargs)
        eos = self._tokenizer.eos_token_id
        if input_ids.shape[1] > 1:  # a prefill: plan each row from the title in its prompt
            texts = self._tokenizer.batch_decode(input_ids)
            plans = [self._plan(text) for text in texts]
            if any(plans) or past_key_values is not None:
                self._plans = [plan + [eos] for plan in plans]
            self._step = 0
        if past_key_values is None:  # the shared prompt prefix, computed outside generate()
            return output
        for row, plan in enumerate(self._plans[: output.logits.shape[0]]):
            token = plan[self._step] if self._step < len(plan) else eos
            output.logits[row, -1, token] += 100.0
        self._step += 1
        return output

    def _plan(self, text: str) -> list[int]:
        for title, answer in self._scripts.items():
            if re.search(rf"\b{re.escape(title)}(\n|<\|im_end\|>)", text):
                return self._tokenizer(answer, add_special_tokens=False).input_ids
        return []


def scripted_llm(tokenizer, scripts: dict[str, list[str]] | dict[str, str]) -> LoadedLLM:
    answers = {
        title: s if isinstance(s, str) else "".join(f"{i}. {tag}\n" for i, tag in enumerate(s, start=1))
        for title, s in scripts.items()
    }
    base = tiny_llama(tokenizer, tied=True)
    model = ScriptedLlama(base.config).eval()
    model.load_state_dict(base.state_dict())
    model.setup(tokenizer, answers)
    return LoadedLLM(model=model, tokenizer=tokenizer, name="scripted", fingerprint="1" * 16, device="cpu")


# --- prompts ----------------------------------------------------------------------------------


def test_item_from_a_dim_items_row():
    row = {
        "item_id": 1,
        "title": "Toy Story",
        "description": None,
        "attributes": {"genre": ["Adventure", "Animation"], "year": ["1995"], "original_title": ["Toy Story (1995)"]},
        "attributes_text": "ignored",
    }
    item = ItemDescription.from_row(row)
    assert item == ItemDescription("1", "Toy Story", None, row["attributes"])
    # older DuckDB clients return MAPs as key and value lists
    legacy = dict(row, attributes={"key": ["genre", "year"], "value": [["Drama"], ["2001"]]}, description="  ")
    assert ItemDescription.from_row(legacy).attributes == {"genre": ["Drama"], "year": ["2001"]}
    assert ItemDescription.from_row(legacy).description is None
    assert ItemDescription.from_row({"item_id": "x", "title": "T", "attributes": None}).attributes == {}


def test_describe_item_uses_every_field_once():
    item = ItemDescription(
        "1",
        "The American President",
        "A widowed president falls in love. " * 40,
        {
            "original_title": ["American President, The (1995)"],
            "genre": ["Comedy", "Drama", "Romance"],
            "year": ["1995"],
            "studio": ["Castle Rock"],
        },
    )
    text = describe_item(item)
    lines = text.splitlines()
    assert lines[:3] == ["Title: The American President", "Year: 1995", "Genre: Comedy, Drama, Romance"]
    assert "Studio: Castle Rock" in lines
    assert "Original title" not in text  # it only restates the title and year
    assert lines[-1].startswith("Description: A widowed president") and lines[-1].endswith("…")
    assert len(lines[-1]) < 620
    placeholder = ItemDescription("2", "X", None, {"genre": ["(no genres listed)"]})
    assert describe_item(placeholder) == "Title: X"


def test_messages_with_few_shot_turns(tokenizer):
    messages = base_tag_messages(ITEMS[1], DEFAULT_FEW_SHOT, num_tags=5)
    roles = [m["role"] for m in messages]
    assert roles == ["system"] + ["user", "assistant"] * len(DEFAULT_FEW_SHOT) + ["user"]
    assert messages[-1]["content"].startswith("Write 5 different tags for this movie, as a numbered list.")
    for field in ("Title: Matrix", "Year: 1999", "Genre: Action, Sci-Fi", "Description: A hacker learns the truth."):
        assert field in messages[-1]["content"]
    first_answer = messages[2]["content"].splitlines()
    assert len(first_answer) == 5 and first_answer[0] == "1. dinosaurs"

    own = [(ItemDescription("p1", "Trail Shoe", None, {"brand": ["Acme"]}), ["grippy", "lightweight"])]
    custom = base_tag_messages(ITEMS[0], own, num_tags=3, item_noun="product")
    assert len(custom) == 4 and "tag products" in custom[0]["content"]
    assert custom[2]["content"] == "1. grippy\n2. lightweight"

    prompt = base_tag_prompt(tokenizer, ITEMS[0], DEFAULT_FEW_SHOT)
    assert prompt.endswith("<|im_start|>assistant\n") and prompt.count("<|im_start|>user") == 4
    assert BASE_TAG_PROMPT_VERSION == "base-v1"


def test_shared_prefix_split_is_exact(tokenizer):
    prompts = [apply_chat(tokenizer, base_tag_messages(item)) for item in ITEMS]
    prefix, suffixes = split_shared_prefix(tokenizer, prompts, enabled=True)
    assert len(prefix) > 100
    for prompt, suffix in zip(prompts, suffixes, strict=True):
        assert prefix + suffix == tokenizer(prompt, add_special_tokens=False).input_ids
        assert suffix
    assert split_shared_prefix(tokenizer, prompts, enabled=False)[0] == []
    single_prefix, (single_suffix,) = split_shared_prefix(tokenizer, prompts[:1], enabled=True)
    assert len(single_suffix) == 1


# --- generation on the tiny models --------------------------------------------------------------


def test_tags_come_back_in_input_order(tokenizer):
    llm = scripted_llm(tokenizer, SCRIPTS)
    tags = generate_base_tags(llm, ITEMS, BaseTagConfig(num_tags=4, batch_size=2))
    assert tags == [SCRIPTS[item.title][:4] for item in ITEMS]
    reversed_tags = generate_base_tags(llm, ITEMS[::-1], BaseTagConfig(num_tags=4, batch_size=2))
    assert reversed_tags == tags[::-1]


def test_batch_size_does_not_change_the_answers(tiny_llm):
    """Random weights: the raw answers are token salad, and must be the same token salad."""
    config = BaseTagConfig(num_tags=3, max_new_tokens=12, lowercase_only=False)
    one = generate_base_tag_texts(tiny_llm, ITEMS, dataclasses.replace(config, batch_size=1))
    four = generate_base_tag_texts(tiny_llm, ITEMS, dataclasses.replace(config, batch_size=4))
    assert one == four
    assert len(set(one)) == len(ITEMS)  # the answers depend on the prompt: a mix-up would show
    unshared = generate_base_tag_texts(tiny_llm, ITEMS, dataclasses.replace(config, batch_size=4, share_prompt_prefix=False))
    assert unshared == four
    scripted = scripted_llm(tiny_llm.tokenizer, SCRIPTS)
    assert generate_base_tags(scripted, ITEMS, BaseTagConfig(batch_size=1)) == generate_base_tags(
        scripted, ITEMS, BaseTagConfig(batch_size=4)
    )


def test_generation_stops_after_num_tags_entries(tokenizer):
    llm = scripted_llm(tokenizer, SCRIPTS)
    texts = generate_base_tag_texts(llm, ITEMS, BaseTagConfig(num_tags=3, batch_size=5))
    assert texts == ["".join(f"{i}. {tag}\n" for i, tag in enumerate(SCRIPTS[it.title][:3], 1)) for it in ITEMS]


def test_invalid_entries_do_not_count(tokenizer):
    """A duplicate, the title and a contradicting genre are written, dropped, and not counted."""
    answer = "1. alpha\n2. alpha\n3. toy story\n4. comedy\n5. war\n6. beta\n7. gamma\n8. delta\n"
    llm = scripted_llm(tokenizer, {"Toy Story": answer})
    loose = BaseTagConfig(num_tags=4, ban_repeated_first_word=False, ban_duplicate_entries=False, ban_repeated_words=False)
    catalog = catalog_attribute_values(ITEMS)
    assert catalog == {"genre": {"adventure", "comedy", "action", "sci-fi", "crime", "drama", "romance", "war"}}
    (text,) = generate_base_tag_texts(llm, ITEMS[:1], loose, context=BaseTagContext(catalog_values=catalog))
    assert text == answer[: answer.index("8.")]  # alpha, comedy (its own genre), beta, gamma
    (tags,) = generate_base_tags(llm, ITEMS[:1], loose, context=BaseTagContext(catalog_values=catalog))
    assert tags == ["alpha", "comedy", "beta", "gamma"]
    (without_catalog,) = generate_base_tags(llm, ITEMS[:1], loose)
    assert without_catalog == ["alpha", "comedy", "war", "beta"]


def test_repetition_ban_changes_what_is_written(tokenizer):
    answer = "1. alpha\n2. alpha\n3. alpha beta\n4. Gamma\n5. the delta\n6. epsilon\n"
    llm = scripted_llm(tokenizer, {"Toy Story": answer})
    config = BaseTagConfig(num_tags=6, max_new_tokens=40)
    (text,) = generate_base_tag_texts(llm, ITEMS[:1], config)
    entries = [line.split(". ", 1)[-1] for line in text.splitlines() if line.strip()]
    assert entries[0] == "alpha"
    assert all(not entry.startswith("alpha") for entry in entries[1:])
    assert "Gamma" not in text and "the delta" not in text
    (loose,) = generate_base_tag_texts(
        llm,
        ITEMS[:1],
        BaseTagConfig(
            num_tags=6,
            max_new_tokens=40,
            ban_repeated_first_word=False,
            ban_duplicate_entries=False,
            ban_repeated_words=False,
            banned_first_words=(),
            lowercase_only=False,
        ),
    )
    assert loose.startswith(answer[: answer.index("6.")])


def test_on_batch_reports_progress_and_max_new_tokens_is_a_cap(tokenizer):
    llm = scripted_llm(tokenizer, SCRIPTS)
    seen = []
    texts = generate_base_tag_texts(llm, ITEMS, BaseTagConfig(num_tags=8, batch_size=2, max_new_tokens=5), on_batch=seen.append)
    assert seen == [2, 2, 1]  # items finished by each batch
    assert all(len(tokenizer(text, add_special_tokens=False).input_ids) <= 5 for text in texts)
    assert generate_base_tags(llm, [], BaseTagConfig()) == []


def test_config_is_validated():
    with pytest.raises(ValueError):
        BaseTagConfig(num_tags=0)
    with pytest.raises(ValueError):
        BaseTagConfig(batch_size=0)


# --- the processors on crafted inputs -------------------------------------------------------------


def _tracked(tokenizer, generated: list[str], config: BaseTagConfig | None = None, title: str = ""):
    """A tracker fed with one generated text per row, and the scores RepetitionBan leaves next."""
    config = config or BaseTagConfig()
    table = token_table(tokenizer)
    encoded = [_ids(tokenizer, text) for text in generated]
    width = max(len(ids) for ids in encoded)
    tracker = EntryTracker(
        table,
        batch_size=len(encoded),
        prompt_length=width,  # update() sees nothing new: the rows are fed below, each at its length
        num_tags=config.num_tags,
        echoes=[title] * len(encoded),
        eos_ids=[tokenizer.eos_token_id],
    )
    for index, ids in enumerate(encoded):
        for token in ids:
            tracker._consume(index, token)
    ban = repetition_ban(tracker, config)
    input_ids = torch.zeros(len(encoded), width, dtype=torch.long)
    scores = ban(input_ids, torch.zeros(len(encoded), len(table.texts)))
    return tracker, scores


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_ban_first_word_of_earlier_entries(tokenizer):
    _, scores = _tracked(tokenizer, ["1. alpha\n2. beta\n3.", "1. alpha\n2. beta\n3"])
    alpha, beta, gamma = (_ids(tokenizer, w)[0] for w in (" alpha", " beta", " gamma"))
    assert scores[0, alpha] == -float("inf") and scores[0, beta] == -float("inf")
    assert scores[0, gamma] == 0
    # mid-number ("3" without its "."): nothing is banned yet
    assert scores[1, alpha] == 0


def test_ban_articles_blanks_and_extra_numbers(tokenizer):
    _, scores = _tracked(tokenizer, ["1. 1940s\n2."])
    the = _ids(tokenizer, " the")[0]
    newline = _ids(tokenizer, "\n")[0]
    space = _ids(tokenizer, " ")[0]
    digit = _ids(tokenizer, "3")[0]
    assert scores[0, the] == -float("inf")
    assert scores[0, newline] == -float("inf") and scores[0, space] == -float("inf")
    assert scores[0, digit] == -float("inf")
    _, first = _tracked(tokenizer, ["1."])
    assert first[0, digit] == 0  # the first entry may be a number
    assert first[0, the] == -float("inf")


def test_ban_duplicate_entry_and_title_endings(tokenizer):
    _, scores = _tracked(tokenizer, ["1. small town\n2. small town", "1. alpha\n2. toy story"], title="Toy Story")
    newline = _ids(tokenizer, "\n")[0]
    comma = _ids(tokenizer, ",")[0]
    eos = tokenizer.eos_token_id
    for row in (0, 1):
        assert scores[row, newline] == -float("inf") and scores[row, comma] == -float("inf")
        assert scores[row, eos] == -float("inf")
    _, fresh = _tracked(tokenizer, ["1. small town\n2. small"], config=BaseTagConfig(ban_repeated_words=False))
    assert fresh[0, newline] == 0


def test_ban_words_already_used(tokenizer):
    _, scores = _tracked(tokenizer, ["1. small town\n2. winter"])
    town, love = _ids(tokenizer, " town")[0], _ids(tokenizer, " love")[0]
    assert scores[0, town] == -float("inf")
    assert scores[0, love] == 0


def test_tracker_counts_valid_entries_and_stops(tokenizer):
    config = BaseTagConfig(num_tags=2)
    tracker, _ = _tracked(tokenizer, ["1. alpha\n2. alpha\n3. movie\n4. beta", "1. alpha\n2. beta\n"], config=config)
    assert [row.valid for row in tracker.rows] == [1, 2]  # "beta" of row 0 is not closed yet
    assert tracker.rows[0].entries == ["alpha", "alpha", "movie"]
    stop = EnoughTags(tracker)
    done = stop(torch.zeros(2, tracker.consumed, dtype=torch.long), torch.zeros(2, 1))
    assert done.dtype == torch.bool
    assert done.tolist() == [False, True]


def test_lowercase_only(tokenizer):
    table = token_table(tokenizer)
    scores = LowercaseOnly(table)(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, len(table.texts)))
    upper = _ids(tokenizer, " Alpha")
    assert any(scores[0, i] == -float("inf") for i in upper)
    assert scores[0, _ids(tokenizer, " alpha")[0]] == 0
    assert scores[0, tokenizer.eos_token_id] == 0


# --- the real embedded model ---------------------------------------------------------------------


def test_real_model_writes_meaningful_tags():
    llm = load_llm(LLMConfig())
    items = [
        ItemDescription("1", "Toy Story", None, {"year": ["1995"], "genre": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]}),
        ItemDescription("2571", "The Matrix", None, {"year": ["1999"], "genre": ["Action", "Sci-Fi", "Thriller"]}),
        ItemDescription("296", "Pulp Fiction", None, {"year": ["1994"], "genre": ["Comedy", "Crime", "Drama", "Thriller"]}),
        ItemDescription("356", "Forrest Gump", None, {"year": ["1994"], "genre": ["Comedy", "Drama", "Romance", "War"]}),
    ]
    context = BaseTagContext(catalog_values=catalog_attribute_values(items))
    tags = generate_base_tags(llm, items, BaseTagConfig(), context=context)
    for item, item_tags in zip(items, tags, strict=True):
        assert len(item_tags) >= 3, (item.title, item_tags)
        assert len(set(item_tags)) == len(item_tags)
        titles = {item.title.lower(), item.title.lower().removeprefix("the ")}
        assert not titles & set(item_tags), (item.title, item_tags)
        assert not {"movie", "film", "what do you think"} & set(item_tags)


def test_catalog_few_shot_shows_the_catalog_items_with_their_human_tags():
    rows = [
        {
            "item_id": "296", "title": "Pulp Fiction", "description": None,
            "attributes": {"year": ["1994"], "genre": ["Crime"]},
            "native_tags": ["Quentin Tarantino", "Pulp Fiction", "nonlinear", "dark comedy", "cult film"],
        },
        {"item_id": "7", "title": "Untagged", "description": None, "attributes": {}, "native_tags": ["???"]},
    ]
    (example,) = catalog_few_shot(rows, num_tags=3)  # an item whose tags are all junk is no example
    item, tags = example
    assert item.title == "Pulp Fiction" and item.attributes["year"] == ["1994"]
    assert tags == ["quentin tarantino", "nonlinear", "dark comedy"]  # cleaned, title echo dropped, capped
    prompt = base_tag_messages(ItemDescription("1", "Heat"), (example,), num_tags=3)
    assert "Pulp Fiction" in prompt[1]["content"]
    assert prompt[2]["content"] == "1. quentin tarantino\n2. nonlinear\n3. dark comedy"
    with pytest.raises(ValueError, match="few_shot"):
        BaseTagConfig(few_shot="products")
