"""Run profiles: how much of the catalog the LLM stages cover (library code, no Dagster).

quick tags the most popular k-core items and finetunes on fewer examples (minutes on a
laptop); full tags the whole k-core catalog.
"""

QUICK_PROFILE_ITEMS = 300

PROFILES: dict[str, dict[str, int | None]] = {
    "quick": {"max_items": QUICK_PROFILE_ITEMS, "max_examples": 128},
    "full": {"max_items": None, "max_examples": 600},
}
