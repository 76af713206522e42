"""Adapters for the public GroupLens MovieLens layouts.

* ``movielens-latest``: ml-latest, ml-latest-small, ml-25m, ml-32m (RFC-4180 CSV, UTF-8):
  movies.csv, ratings.csv and an optional tags.csv.
* ``movielens-1m``: movies.dat and ratings.dat, latin-1, fields separated by "::".
* ``movielens-100k``: u.data (tab-separated), u.item (pipe-separated, latin-1, genres as
  19 0/1 flags) and u.genre (flag order); no header lines.

MovieLens has no descriptions, so items carry title only; the year, genres and (100k)
release date become item attributes. Titles are shown the way people write them
("American President, The (1995)" -> "The American President", year 1995) because the
title is what the tagger reads; where an article or alternative title was moved, the
file's text is kept as ``original_title``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from dagster_betag.datasets.contract import conform, empty_table
from dagster_betag.datasets.reader import read_csv_text, split_values, stripped_id

Tables = dict[str, pl.DataFrame]

# u.genre as shipped with ml-100k, in flag order; used when the file is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_ML100K_INFO_COLUMNS = ("item_id", "title", "release_date", "video_release_date", "imdb_url")

NO_GENRE = "(no genres listed)"

# MovieLens files a leading article after the title: "Postman, The (Postino, Il) (1994)".
_ARTICLES = "The|A|An|Les|La|Le|Il|Das|Die|Der|El|Los|Las"
_YEAR = r"\s*\((\d{4})\)$"
# Applied in order, to the title and then to a trailing "(alternative title)"; "L'" joins
# its noun without a space, so it needs rules of its own.
_ARTICLE_MOVES = (
    (rf"^(.+?), ({_ARTICLES})( \([^()]*\))?$", "$2 $1$3"),
    (r"^(.+?), (L')( \([^()]*\))?$", "$2$1$3"),
    (rf"\(([^()]+), ({_ARTICLES})\)$", "($2 $1)"),
    (r"\(([^()]+), (L')\)$", "($2$1)"),
)


def read_movielens_latest(source_dir: Path) -> Tables:
    """ml-latest(-small)/ml-25m/ml-32m: movies.csv, ratings.csv and an optional tags.csv."""
    movies = read_csv_text(source_dir / "movies.csv", required=("movieId", "title", "genres"))
    movies = movies.rename({"movieId": "item_id"}).with_columns(stripped_id("item_id"))
    ratings = read_csv_text(source_dir / "ratings.csv", required=("userId", "movieId", "rating", "timestamp"))
    return {
        **_movie_tables(movies, _split_genres(movies)),
        "events": _rating_events(ratings.rename({"userId": "user_id", "movieId": "item_id"})),
        "native_tags": _native_tags(source_dir / "tags.csv"),
    }


def read_movielens_1m(source_dir: Path) -> Tables:
    """ml-1m: movies.dat (MovieID::Title::Genres) and ratings.dat (UserID::MovieID::Rating::Timestamp)."""
    dat = {"separator": "::", "quote_char": None, "encoding": "latin-1", "required": ()}
    movies = read_csv_text(source_dir / "movies.dat", columns=("item_id", "title", "genres"), **dat)
    movies = movies.with_columns(stripped_id("item_id"))
    ratings = read_csv_text(source_dir / "ratings.dat", columns=("user_id", "item_id", "rating", "timestamp"), **dat)
    return {
        **_movie_tables(movies, _split_genres(movies)),
        "events": _rating_events(ratings),
        "native_tags": empty_table("native_tags"),
    }


def read_movielens_100k(source_dir: Path) -> Tables:
    """ml-100k: u.item with genre flags named by u.genre, and u.data ratings."""
    genres = _ml100k_genres(source_dir / "u.genre")
    movies = read_csv_text(
        source_dir / "u.item", columns=(*_ML100K_INFO_COLUMNS, *genres),
        separator="|", quote_char=None, encoding="latin-1", required=(),
    )  # fmt: skip
    movies = movies.with_columns(stripped_id("item_id"))
    ratings = read_csv_text(
        source_dir / "u.data", columns=("user_id", "item_id", "rating", "timestamp"),
        separator="\t", quote_char=None, required=(),
    )  # fmt: skip
    release_dates = _attribute(movies, "release_date", pl.col("release_date"))
    return {
        **_movie_tables(movies, _flagged_genres(movies, genres), release_dates),
        "events": _rating_events(ratings),
        "native_tags": empty_table("native_tags"),
    }


def display_title(raw: pl.Expr) -> pl.Expr:
    """The title without its "(YYYY)" suffix and with a trailing article moved to the front."""
    title = raw.str.strip_chars().str.replace(_YEAR, "")
    for pattern, replacement in _ARTICLE_MOVES:
        title = title.str.replace(pattern, replacement)
    return title


def _movie_tables(movies: pl.DataFrame, *attributes: pl.DataFrame) -> Tables:
    """items and item_attributes from movies (item_id, raw title) and ready-made attribute rows.

    Adds the ``year`` attribute and, where the display title is more than the file's text
    without its year (an article moved), ``original_title``.
    """
    movies = movies.with_columns(
        original_title=pl.col("title"),
        title=display_title(pl.col("title")),
        year=pl.col("title").str.strip_chars().str.extract(_YEAR, 1),
    )
    renamed = movies.filter(
        pl.col("original_title").str.strip_chars().str.replace(_YEAR, "") != pl.col("title")
    )
    all_attributes = pl.concat(
        [
            _attribute(movies, "year", pl.col("year")),
            _attribute(renamed, "original_title", pl.col("original_title")),
            *attributes,
        ]
    )
    return {
        "items": conform("items", movies),
        "item_attributes": conform("item_attributes", all_attributes.sort("source_row", maintain_order=True)),
    }


def _attribute(movies: pl.DataFrame, name: str, value: pl.Expr) -> pl.DataFrame:
    """One attribute row per movie where ``value`` is not null."""
    rows = movies.select("source_file", "source_row", "item_id", attribute_name=pl.lit(name), attribute_value=value)
    return rows.filter(pl.col("attribute_value").is_not_null())


def _split_genres(movies: pl.DataFrame) -> pl.DataFrame:
    """genre attribute rows from a "|"-separated genres column; "(no genres listed)" yields none."""
    genres = _attribute(movies, "genre", split_values("genres")).explode("attribute_value")
    return genres.filter(pl.col("attribute_value").is_not_null() & (pl.col("attribute_value") != NO_GENRE))


def _flagged_genres(movies: pl.DataFrame, genres: tuple[str, ...]) -> pl.DataFrame:
    """genre attribute rows from ml-100k's 0/1 flag columns; the "unknown" flag means no genre."""
    flags = [name for name in genres if name.lower() != "unknown"]
    long = movies.unpivot(
        flags, index=["source_file", "source_row", "item_id"], variable_name="attribute_value", value_name="flag"
    )
    return long.filter(pl.col("flag").str.strip_chars() == "1").select(
        "source_file", "source_row", "item_id", attribute_name=pl.lit("genre"), attribute_value="attribute_value"
    )


def _ml100k_genres(path: Path) -> tuple[str, ...]:
    """Genre names in flag order from u.genre ("name|index" lines), or the standard 19 when absent."""
    if not path.is_file():
        return ML100K_GENRES
    genres = read_csv_text(
        path, columns=("name", "index"), separator="|", quote_char=None, encoding="latin-1", required=()
    )
    genres = genres.filter(pl.col("name").is_not_null())
    return tuple(genres.sort(pl.col("index").str.strip_chars().cast(pl.Int64, strict=False), nulls_last=True)["name"])


def _rating_events(ratings: pl.DataFrame) -> pl.DataFrame:
    return conform(
        "events",
        ratings.with_columns(
            stripped_id("user_id"),
            stripped_id("item_id"),
            event_at=pl.col("timestamp"),
            event_type=pl.lit("rating"),
            event_value=pl.col("rating"),
        ),
    )


def _native_tags(path: Path) -> pl.DataFrame:
    """tags.csv is optional; an absent or header-only file means no human tags."""
    if not path.is_file():
        return empty_table("native_tags")
    tags = read_csv_text(path, required=("movieId", "tag"), allow_no_rows=True)
    return conform(
        "native_tags",
        tags.with_columns(
            item_id=stripped_id("movieId"),
            user_id=stripped_id("userId") if "userId" in tags.columns else pl.lit(None),
            tagged_at=pl.col("timestamp") if "timestamp" in tags.columns else pl.lit(None),
        ),
    )
