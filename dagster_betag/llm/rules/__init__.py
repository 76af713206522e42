"""Logits rules: what a decoder may write next, one interface for all of them (library code, no Dagster).

A rule is called at every decoding step with the rows it scores and returns their processed
log-probs (banned tokens at -inf)::

    rule(sequences, log_probs) -> log_probs
    # sequences: (rows, P + t) long, prompt (P, padded) + the t tokens generated so far
    # log_probs: (rows, V) float next-token scores -> (rows, V)

The rules of this package:

- ``entries``: base tags, greedy decoding of a numbered list (``RepetitionBan``,
  ``LowercaseOnly``, and ``EnoughTags``, the stopping criterion that shares their
  ``EntryTracker``);
- ``beams``: BETag beams (``BeamTagRules``: a tag cap per beam, no repeated entry);
- ``vocabulary``: BETag beams may only write tags of the canonical vocabulary
  (``VocabularyConstraint`` over a ``TagTrie``).

transformers' ``LogitsProcessorList`` calls its members the same way, so a rule also runs
inside ``model.generate``; ``decoding.diverse_beam_search`` takes one rule, ``chain_rules``
makes one of several.
"""

from __future__ import annotations

from typing import Protocol

import torch


class LogitsRule(Protocol):
    def __call__(self, sequences: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """(rows, P + t) long ids so far, (rows, V) log-probs -> (rows, V) processed log-probs."""
        ...


def chain_rules(*rules: LogitsRule | None) -> LogitsRule:
    """One rule applying ``rules`` in order (None skipped, for optional ones). Put
    ``VocabularyConstraint`` after ``BeamTagRules``: once the tag cap is reached the beam rules
    keep only EOS, which the constraint then keeps; the other way round the beam rules would copy
    the -inf the constraint gave EOS after a separator, and the beam would run on with no finite
    log-prob."""
    active = [rule for rule in rules if rule is not None]

    def chained(sequences: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        for rule in active:
            log_probs = rule(sequences, log_probs)
        return log_probs

    return chained
