"""The base tagger: what the pipeline needs from whatever writes base tags (library code, no Dagster).

Two implement it: ``model.LoadedLLM`` (a local model, greedy decoding under the logits rules)
and ``api.ApiTagger`` (a model behind an OpenAI-compatible API). ``name``, ``fingerprint``
and ``precision`` key the shards the tags are written to, so tags of one model are never
mixed with another's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from dagster_betag.llm.prompts import DEFAULT_FEW_SHOT

if TYPE_CHECKING:  # annotations only: this module stays importable without torch
    from dagster_betag.llm.base_tags import BaseTagConfig, FewShot
    from dagster_betag.llm.model import ModelIdentity
    from dagster_betag.llm.prompts import ItemDescription


@dataclass(frozen=True)
class BaseTagContext:
    """The catalog-wide inputs of one base-tag run, the same for every item and shard (so an
    item's tags never depend on the shard it is tagged in); here, not in ``base_tags``, so
    that taggers can default to it without importing torch.

    ``few_shot``: the examples the prompt shows. ``catalog_values``: every value of the
    exclusive attributes over the catalog (``base_tags.catalog_attribute_values``); a tag
    naming one the item does not have is dropped. None drops nothing.
    """

    few_shot: FewShot = DEFAULT_FEW_SHOT
    catalog_values: Mapping[str, Iterable[str]] | None = None


class Tagger(Protocol):
    name: str  # the model's name
    fingerprint: str  # a stable hash of the weights' source (or of the API endpoint and model)

    @property
    def precision(self) -> str:
        """What the outputs were decoded in (``float32``, ``bfloat16``; ``api`` for a remote model)."""
        ...

    def generate_base_tags(
        self,
        items: Sequence[ItemDescription],
        config: BaseTagConfig,
        *,
        context: BaseTagContext = ...,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        """Each item's base tags (at most ``config.num_tags``), in the order of ``items``;
        ``on_batch(n)`` after each n items done."""
        ...


@dataclass
class DeferredTagger:
    """A local model as a ``Tagger`` whose weights load on the first ``generate_base_tags``:
    its run key comes from ``identity`` (``model.model_identity``), so a run with nothing left
    to tag (a refresh of an unchanged catalog) never loads them."""

    identity: ModelIdentity
    load: Callable[[], Tagger]
    _loaded: Tagger | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def precision(self) -> str:
        return self.identity.precision

    def generate_base_tags(self, items: Sequence[ItemDescription], config: BaseTagConfig, **options) -> list[list[str]]:
        """``Tagger.generate_base_tags`` of the loaded model (``options``: its ``context`` and ``on_batch``)."""
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded.generate_base_tags(items, config, **options)
