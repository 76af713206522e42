"""The BETag variants: the full method and the poster's Table 3 ablations (library code,
no torch, no Dagster). The one place their names are written: the tag-source registry,
the profiles, the run config, the reports and the SQL read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BetagVariant:
    """A row of the poster's Table 3: whether the finetuned model decodes, and whether it
    decodes several diverse beams (else one greedy beam)."""

    name: str
    finetuned: bool
    multi_beam: bool
    description: str

    @property
    def tag_source(self) -> str:
        """Its name in marts.item_tag_documents and the results: betag, betag_no_finetune, ..."""
        return "betag" if self.name == FULL_BETAG_NAME else f"betag_{self.name}"


FULL_BETAG_NAME = "betag"
FULL_BETAG = BetagVariant(FULL_BETAG_NAME, finetuned=True, multi_beam=True, description="finetuned model, diverse beams")
ABLATIONS = (
    BetagVariant("no_finetune", finetuned=False, multi_beam=True, description="base model, diverse beams"),
    BetagVariant("one_beam", finetuned=True, multi_beam=False, description="finetuned model, one beam"),
    BetagVariant("neither", finetuned=False, multi_beam=False, description="base model, one beam"),
)
VARIANTS = (FULL_BETAG, *ABLATIONS)
ABLATION_NAMES = tuple(variant.name for variant in ABLATIONS)


def diverse_twin(variant: BetagVariant) -> BetagVariant:
    """The multi-beam variant decoded by the same model (finetuned or not) as ``variant``: a
    one-beam variant is group 0 of its decode (``betag.first_group``)."""
    return next(v for v in VARIANTS if v.multi_beam and v.finetuned == variant.finetuned)


def variant_named(name: str) -> BetagVariant:
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    raise ValueError(f"unknown BETag variant {name!r}; use one of {', '.join(v.name for v in VARIANTS)}")
