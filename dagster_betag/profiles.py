"""Run profiles: how much of the catalog the LLM stages cover (library code, no Dagster).

quick tags the most popular k-core items, finetunes on fewer examples and trains the
recommenders of the evaluation with one seed (minutes on a laptop); full tags the whole
k-core catalog and trains three seeds.
"""

QUICK_PROFILE_ITEMS = 300

PROFILES: dict[str, dict] = {
    "quick": {"max_items": QUICK_PROFILE_ITEMS, "max_examples": 128, "seeds": [0]},
    "full": {"max_items": None, "max_examples": 600, "seeds": [0, 1, 2]},
}
