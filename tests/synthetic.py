"""A small MovieLens-layout dataset with known defects, and plain-Python references.

The references recompute, independently of SQL, what the warehouse must contain: the
iterated k-core, the leave-one-out split, the new items and the behavior sessions.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

EPOCH_START = int(datetime(2015, 3, 1, tzinfo=timezone.utc).timestamp())


@dataclass(frozen=True)
class Event:
    source_row: int
    user_id: str
    item_id: str
    timestamp: int

    @property
    def event_id(self) -> str:
        return f"ratings.csv#{self.source_row}"

    @property
    def event_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp, tz=timezone.utc).replace(tzinfo=None)


@dataclass
class SyntheticMovieLens:
    folder: Path
    valid_events: list[Event] = field(default_factory=list)
    # (source table, rejection reason) -> rows the warehouse must quarantine
    expected_quarantine: Counter = field(default_factory=Counter)
    # movies.csv data rows that staging must reject
    rejected_item_rows: list[int] = field(default_factory=list)


def write_synthetic_movielens(folder: Path, seed: int = 7, n_users: int = 40, n_items: int = 30) -> SyntheticMovieLens:
    """ml-latest layout: movies.csv, ratings.csv, tags.csv, with defects of every kind."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = SyntheticMovieLens(folder)
    genres = ["Action", "Comedy", "Drama", "Sci-Fi", "Thriller"]

    movies = [
        (str(i), f"Movie {i}, The ({1980 + i})", "|".join(rng.sample(genres, rng.randint(1, 3))))
        for i in range(1, n_items + 1)
    ]
    missing_title_id = str(n_items + 1)
    movies.append((missing_title_id, "", "Drama"))
    dataset.expected_quarantine["items", "missing_title"] += 1
    movies.append(("3", "Movie 3 again (2001)", "Comedy"))  # a second row for an existing id
    dataset.expected_quarantine["items", "duplicate_item"] += 1
    _write_csv(folder / "movies.csv", ["movieId", "title", "genres"], movies)
    # the attributes read from those two rows are quarantined with them (rejected_item);
    # how many depends on the adapter, so the test counts them in the landing table
    dataset.rejected_item_rows = [n_items + 1, n_items + 2]

    ratings: list[tuple[str, str, str, str]] = []
    for user in range(1, n_users + 1):
        # a few users are too short for the 5-core; some items are rarely rated
        n_rated = rng.choice([3, 4]) if user % 9 == 0 else rng.randint(5, 18)
        weights = [1.0 / (1 + i) for i in range(n_items)]
        items = _weighted_sample(rng, list(range(1, n_items + 1)), weights, n_rated)
        timestamp = EPOCH_START + user * 86_400 * 3
        for item in items:
            # equal timestamps, short steps, and gaps that open new sessions
            timestamp += rng.choice([0, 0, 20, 90, 600, 1_801, 7_200, 86_400])
            ratings.append((str(user), str(item), str(rng.choice([2.5, 3.0, 4.0, 5.0])), str(timestamp)))
    for row_index, (user, item, _, timestamp) in enumerate(ratings, start=1):
        dataset.valid_events.append(Event(row_index, user, item, int(timestamp)))

    defects = [
        (("1", "2", "4.0", "not-a-time"), "bad_timestamp"),
        (("1", "999", "3.0", str(EPOCH_START)), "unknown_item"),
        (("1", missing_title_id, "3.0", str(EPOCH_START)), "unknown_item"),
        (("", "2", "3.0", str(EPOCH_START)), "missing_user_id"),
        (("1", "2", "3.0", "99999999999"), "timestamp_out_of_range"),
        (ratings[0], "duplicate_event"),
    ]
    for row, reason in defects:
        ratings.append(row)
        dataset.expected_quarantine["events", reason] += 1
    _write_csv(folder / "ratings.csv", ["userId", "movieId", "rating", "timestamp"], ratings)
    with (folder / "ratings.csv").open("a", encoding="utf-8") as handle:
        handle.write("2,3,4.")  # a file cut off mid-row: the row lands without its timestamp
    dataset.expected_quarantine["events", "missing_timestamp"] += 1

    tags = [
        ("1", "1", "Pixar", str(EPOCH_START)),
        ("2", "1", "pixar.", str(EPOCH_START + 5)),
        ("2", "4", "time travel", str(EPOCH_START + 9)),
        ("3", "999", "ghost", str(EPOCH_START)),
    ]
    dataset.expected_quarantine["native_tags", "unknown_item"] += 1
    _write_csv(folder / "tags.csv", ["userId", "movieId", "tag", "timestamp"], tags)
    return dataset


def _weighted_sample(rng: random.Random, population: list[int], weights: list[float], k: int) -> list[int]:
    chosen: list[int] = []
    pool, pool_weights = list(population), list(weights)
    for _ in range(k):
        index = rng.choices(range(len(pool)), weights=pool_weights)[0]
        chosen.append(pool.pop(index))
        pool_weights.pop(index)
    return chosen


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def reference_kcore(events: list[Event], min_user: int, min_item: int) -> list[Event]:
    """Remove users and items under their thresholds one at a time until none is left."""
    kept = list(events)
    while True:
        user_counts = Counter(e.user_id for e in kept)
        item_counts = Counter(e.item_id for e in kept)
        survivors = [e for e in kept if user_counts[e.user_id] >= min_user and item_counts[e.item_id] >= min_item]
        if len(survivors) == len(kept):
            return kept
        kept = survivors


def reference_split(events: list[Event]) -> dict[str, tuple[int, str]]:
    """event_id -> (position, split), ordering equal timestamps by item_id as text."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    result: dict[str, tuple[int, str]] = {}
    for user_events in by_user.values():
        ordered = sorted(user_events, key=lambda e: (e.timestamp, e.item_id, e.source_row))
        n = len(ordered)
        for position, event in enumerate(ordered, start=1):
            split = "train"
            if n >= 3 and position == n:
                split = "test"
            elif n >= 3 and position == n - 1:
                split = "validation"
            result[event.event_id] = (position, split)
    return result


def reference_new_items(item_ids: set[str], share: float) -> set[str]:
    """The items the new-item protocol treats as new: int(md5 hex prefix, 16) / 2^32 < share."""
    return {item_id for item_id in item_ids if int(hashlib.md5(item_id.encode()).hexdigest()[:8], 16) / 2**32 < share}


def reference_sessions(
    events: list[Event], gap_minutes: int, max_items: int, min_items: int, new_item_share: float
) -> list[list[str]]:
    """Item lists of the learnable train sessions (no new item): a gap over gap_minutes
    opens a new session."""
    split = reference_split(events)
    new_items = reference_new_items({event.item_id for event in events}, new_item_share)
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        if split[event.event_id][1] == "train" and event.item_id not in new_items:
            by_user[event.user_id].append(event)
    sessions: list[list[str]] = []
    for user_events in by_user.values():
        ordered = sorted(user_events, key=lambda e: split[e.event_id][0])
        activities: list[list[Event]] = []
        for event in ordered:
            if not activities or event.event_at - activities[-1][-1].event_at > timedelta(minutes=gap_minutes):
                activities.append([])
            activities[-1].append(event)
        for activity in activities:
            for start in range(0, len(activity), max_items):
                chunk = activity[start : start + max_items]
                if len(chunk) >= min_items:
                    sessions.append([e.item_id for e in chunk])
    return sessions
