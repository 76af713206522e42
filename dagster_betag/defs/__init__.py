"""The Dagster layer: thin definitions over the library modules of dagster_betag."""
