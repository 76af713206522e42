"""The tag sources of ``marts.item_tag_documents`` (library code, no Dagster).

They are written once, as the ``betag_tag_sources`` var of dbt_project.yml: dbt builds the
documents from it (one model per source, looped over by item_tag_documents), and this module
reads the same list, so Python's names, order and LLM flags cannot drift from the SQL's.
A new tag source is one dbt model of (item_id, tags) plus one line of that list. The pairs
of sources compared user by user (``betag_paired_comparisons``) are read from the same file.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from dagster_betag import settings

TAG_SOURCES_VAR = "betag_tag_sources"
PAIRED_COMPARISONS_VAR = "betag_paired_comparisons"


@dataclass(frozen=True)
class TagSource:
    """One tag source: its ``name`` in the documents and results, the dbt ``model`` of
    (item_id, tags) that builds it, whether an LLM wrote its tags, and, for a BETag variant
    (llm/variants.py), the variant whose rows of that model it holds."""

    name: str
    model: str
    llm_made: bool
    description: str
    betag_variant: str | None = None


def registered_tag_sources() -> tuple[TagSource, ...]:
    """The registry, in display order, from the project's dbt_project.yml."""
    return read_tag_sources(settings.DBT_PROJECT_DIR)


@functools.cache
def read_tag_sources(project_dir: Path) -> tuple[TagSource, ...]:
    """The ``betag_tag_sources`` var of ``project_dir``/dbt_project.yml, as TagSources."""
    return tuple(TagSource(**entry) for entry in _project_vars(project_dir)[TAG_SOURCES_VAR])


@dataclass(frozen=True)
class PairedComparison:
    """Tag source ``a`` against ``b``, user by user: d_u = m_u(a) - m_u(b)."""

    a: str
    b: str
    description: str


def registered_paired_comparisons() -> tuple[PairedComparison, ...]:
    """The ``betag_paired_comparisons`` var: the pairs marts.eval_paired_differences holds."""
    return read_paired_comparisons(settings.DBT_PROJECT_DIR)


@functools.cache
def read_paired_comparisons(project_dir: Path) -> tuple[PairedComparison, ...]:
    return tuple(PairedComparison(**entry) for entry in _project_vars(project_dir)[PAIRED_COMPARISONS_VAR])


def _project_vars(project_dir: Path) -> dict:
    return yaml.safe_load((project_dir / "dbt_project.yml").read_text(encoding="utf-8"))["vars"]


def tag_source_names() -> tuple[str, ...]:
    return tuple(source.name for source in registered_tag_sources())


def llm_tag_source_names() -> tuple[str, ...]:
    """The sources whose tags an LLM wrote (not native, not the count-based propagated ones)."""
    return tuple(source.name for source in registered_tag_sources() if source.llm_made)


def in_display_order(names: Iterable[str]) -> list[str]:
    """The registered sources among ``names``, in the registry's order."""
    present = set(names)
    return [name for name in tag_source_names() if name in present]
