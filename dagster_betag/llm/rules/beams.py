"""The rules of BETag beams: a tag cap per beam, and no entry written twice."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dagster_betag.llm.tags import clean_text, split_open_entry
from dagster_betag.llm.tokens import TokenTable


class BeamTagRules:
    """A ``LogitsRule`` for BETag beams: ends a beam (only EOS left) once it has written
    ``max_tags`` distinct tags, and with ``ban_repeated`` bans ending an entry (separator or
    EOS) that repeats one of the beam's earlier entries.

    Stateless: every step it re-reads each running beam's generated tokens (beams are
    reordered between steps, so per-row state would have to follow them). Tokens are read
    through the tokenizer's ``TokenTable`` (each token's text), not decoded.
    """

    def __init__(
        self,
        table: TokenTable,
        eos_ids: Sequence[int],
        prompt_length: int,
        *,
        max_tags: int | None,
        ban_repeated: bool,
    ):
        self.table = table
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long)
        self.ends_entry = torch.cat([table.separator_ids, self.eos]).unique()
        self.prompt_length = prompt_length
        self.max_tags = max_tags
        self.ban_repeated = ban_repeated

    def __call__(self, sequences: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """(rows, P + t) prompt + generated ids, (rows, V) log-probs -> (rows, V)."""
        if sequences.shape[1] == self.prompt_length:
            return log_probs
        eos, ends_entry = self.eos.to(log_probs.device), self.ends_entry.to(log_probs.device)
        log_probs = log_probs.clone()
        texts, cap = self.table.texts, self.max_tags
        for row, ids in enumerate(sequences[:, self.prompt_length :].tolist()):
            finished, current = split_open_entry("".join(texts[i] for i in ids))
            written = {clean_text(entry) for entry in finished} - {""}
            if cap is not None and len(written) >= cap:
                keep = log_probs[row, eos].clone()
                log_probs[row] = -torch.inf
                log_probs[row, eos] = keep
            elif self.ban_repeated and clean_text(current) in written:
                log_probs[row, ends_entry] = -torch.inf
        return log_probs
