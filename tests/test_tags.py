"""Tag parsing and normalization: what an LLM writes becomes clean, distinct tags."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_betag.llm.tags import ECHO_TAGS, clean_text, echo_forms, format_tags, normalize_tag, parse_tags


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Dark Humor", "dark humor"),
        ("  1. Friendship  ", "friendship"),
        ("2) time travel", "time travel"),
        ("(3) heist", "heist"),
        ("- space opera", "space opera"),
        ("* coming of age", "coming of age"),
        ("• 1950s", "1950s"),
        ('"Feel-Good."', "feel-good"),
        ("**Dystopian Future**", "dystopian future"),
        ("The Hero", "hero"),
        ("tags: revenge", "revenge"),
        ("sci-fi", "sci-fi"),
        ("ＦＵＬＬＷＩＤＴＨ", "fullwidth"),  # NFKC
        ("world   war\tii", "world war ii"),
        ("'80s", "80s"),
        ("x", None),  # too short
        ("", None),
        ("   ", None),
        ("1.", None),
        ("a tag with far too many words", None),
        ("a" * 41, None),  # too long
        ("1234 5678", None),  # mostly not letters
        ("$$$ noir $$$ !!!", "noir"),
        ("Movie", None),
        ("tags", None),
        ("What do you think?", None),
        ("Here are 8 tags for this movie:", None),
        ("the", None),
        ("of the", None),
        ("love, loss", None),  # a tag never holds a separator
    ],
)
def test_normalize_tag(raw, expected):
    assert normalize_tag(raw) == expected


def test_normalize_tag_limits_are_parameters():
    assert normalize_tag("one two three four five", max_words=5) == "one two three four five"
    assert normalize_tag("ab", min_chars=3) is None
    assert normalize_tag("abcdef", max_chars=5) is None


def test_every_stoplist_entry_is_dropped():
    assert [tag for tag in ECHO_TAGS if normalize_tag(tag) is not None] == []
    assert normalize_tag("THE MOVIE") is None
    assert clean_text("  1. The Movie!  ") == "movie"


def test_parse_numbered_list():
    text = "1. Toys come to life\n2. Friendship\n3) Rivalry\n10. Coming of age"
    assert parse_tags(text) == ["toys come to life", "friendship", "rivalry", "coming of age"]


def test_parse_bullets_and_separators():
    text = "- Heist\n* Crime; Nonlinear | Dark Humor\n• Los Angeles, 1990s"
    assert parse_tags(text) == ["heist", "crime", "nonlinear", "dark humor", "los angeles", "1990s"]


def test_parse_inline_numbering():
    assert parse_tags("1) heist 2) crime 3) 1990s") == ["heist", "crime", "1990s"]
    # a number inside a tag is not a list marker
    assert parse_tags("apollo 13 mission, world war 2") == ["apollo 13 mission", "world war 2"]


def test_parse_removes_echoes_and_duplicates():
    text = "1. Toy Story\n2. toys\n3. TOYS\n4. Toy Story (1995)\n5. friendship\n6. Write tags"
    assert parse_tags(text, echoes=["Toy Story (1995)", "write tags"]) == ["toys", "friendship"]


def test_parse_title_with_article():
    assert parse_tags("1. The Matrix\n2. matrix\n3. simulation", echoes=["Matrix, The"]) == ["simulation"]
    assert parse_tags("the matrix, simulation", echoes=["The Matrix"]) == ["simulation"]


def test_parse_drops_junk_the_small_model_writes():
    text = (
        "Here are some tags for the movie:\n1. what do you think\n2. movie\n3. 1940\n"
        "4. **Epic**\n5. the\n6. a very long sentence that is not a tag at all\n7. epic"
    )
    assert parse_tags(text) == ["epic"]


def test_parse_max_tags():
    assert parse_tags("a1, b2, c3, d4, e5".replace("1", "a").replace("2", "b"), max_tags=2) == ["aa", "bb"]
    assert parse_tags("alpha, beta", max_tags=0) == []


@pytest.mark.parametrize("bad", [None, 42, b"bytes", "\x00\x01", "\ud800", "1.\n2.\n3.", ",,,;;;|||"])
def test_parse_never_raises(bad):
    result = parse_tags(bad)  # type: ignore[arg-type]
    assert isinstance(result, list)


def test_format_tags_round_trips():
    tags = ["toys come to life", "friendship", "sci-fi"]
    assert format_tags(tags) == "toys come to life, friendship, sci-fi"
    assert parse_tags(format_tags(tags)) == tags
    assert format_tags([]) == ""


def test_echo_forms():
    assert echo_forms(["The American President (1995)"]) >= {"american president"}
    assert echo_forms(["", "  "]) == set()


# --- properties: any text parses to distinct normalized tags, and parsing is idempotent ----------

list_like = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.sampled_from(["1. ", "2) ", "- ", "* ", "• ", "\n", ", ", "; ", " | ", "The ", "tags: ", "movie", "  "]),
        st.from_regex(r"[A-Za-z][a-z]{1,8}( [a-z]{2,8}){0,3}", fullmatch=True),
    ),
    max_size=20,
).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=200), list_like), echoes=st.lists(st.text(max_size=20), max_size=3))
def test_parse_properties(text, echoes):
    tags = parse_tags(text, echoes=echoes)
    assert isinstance(tags, list)
    assert all(isinstance(tag, str) for tag in tags)
    assert len(tags) == len(set(tags))
    assert all(normalize_tag(tag) == tag for tag in tags)
    assert parse_tags(format_tags(tags), echoes=echoes) == tags
    assert parse_tags(", ".join(tags)) == tags


@settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=60))
def test_normalize_is_idempotent(raw):
    tag = normalize_tag(raw)
    if tag is not None:
        assert normalize_tag(tag) == tag
        assert tag == tag.lower().strip()
        assert "  " not in tag


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200), limit=st.integers(min_value=0, max_value=5))
def test_max_tags_is_a_prefix(text, limit):
    assert parse_tags(text, max_tags=limit) == parse_tags(text)[:limit]
