"""Run profiles: how much of the catalog the LLM stages cover (library code, no Dagster).

quick tags the most popular k-core items, finetunes on fewer examples, skips the Table 3
ablations and trains the recommenders of the evaluation with one seed (minutes on a
laptop); full tags the whole k-core catalog, decodes the ablations and trains three seeds.
"""

from dagster_betag.llm.variants import ABLATION_NAMES

QUICK_PROFILE_ITEMS = 200
ALL_ABLATIONS = list(ABLATION_NAMES)  # a list, as the run config takes it

PROFILES: dict[str, dict] = {
    "quick": {"max_items": QUICK_PROFILE_ITEMS, "max_examples": 96, "seeds": [0], "ablations": []},
    "full": {"max_items": None, "max_examples": 400, "seeds": [0, 1, 2], "ablations": ALL_ABLATIONS},
}
