"""UniSRec-style text-enhanced sequential recommender (Hou et al., KDD 2022), transductive
setting (library code, no Dagster).

An item is represented by its text (here: its tags joined into a sentence, embedded by the
frozen MiniLM, see ``text_encoder``) passed through UniSRec's mixture-of-experts adaptor,
plus a learned ID embedding ("transductive": every item is seen in training):

    v_i = MoE(x_i) + e_i
    MoE(x) = sum_k g_k(x) * (Dropout(x) - b_k) W_k              (parametric whitening)
    g(x) = softmax(x G + eps * (softplus(x G_noise) + 0.01)),  eps ~ N(0, I) in training only

The sequence encoder and the training, early-stopping and ranking path are SASRec's
(``sasrec.SequenceEncoder``, ``sasrec.train``, ``sasrec.rank_split``). As in UniSRec's
fine-tuning, scores are temperature-scaled cosines s_i = cos(h, v_i) / tau and the loss is
cross-entropy over all items. Unlike the paper there is no cross-domain pre-training (one
domain); every parameter trains from scratch, so the comparison between tag sources
isolates what the item text adds to the same model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dagster_betag.evaluation.sasrec import SASRecConfig, SequentialRecommender, seeded, xavier_init


@dataclass(frozen=True)
class UniSRecConfig(SASRecConfig):
    """SASRec's configuration plus the adaptor: ``n_experts`` whitening experts (8 as in
    the paper), ``text_dropout`` on the text vector before each expert (the reference
    code's adaptor dropout, 0.2), noisy gating in training, and the softmax temperature
    of the cosine scores (0.07 as in the paper; None = plain dot products as SASRec)."""

    n_experts: int = 8
    text_dropout: float = 0.2
    noisy_gating: bool = True
    temperature: float | None = 0.07


class MoEAdaptor(nn.Module):
    """Text vectors (N, D) -> (N, H): K parametric-whitening experts mixed by a (noisy)
    softmax gate. Initialized as the reference code: W_k ~ N(0, 0.02), b_k = 0 and zero
    gate weights, so all experts start equally weighted.

    One dropout mask is shared by the experts (the reference code draws one per expert):
    (x' - b_k) W_k = x' W_k - b_k W_k then makes all experts a single (D -> K*H) matrix
    product, which is what keeps the adaptor over the whole catalog cheap at every step."""

    def __init__(self, text_dimension: int, hidden: int, n_experts: int, dropout: float, noisy_gating: bool):
        super().__init__()
        self.whitening_bias = nn.Parameter(torch.zeros(n_experts, text_dimension))  # b_k, (K, D)
        self.projection = nn.Parameter(torch.randn(text_dimension, n_experts, hidden) * 0.02)  # W_k, (D, K, H)
        self.gate = nn.Parameter(torch.zeros(text_dimension, n_experts))  # G, (D, K)
        self.gate_noise = nn.Parameter(torch.zeros(text_dimension, n_experts))  # G_noise, (D, K)
        self.dropout = nn.Dropout(dropout)
        self.noisy_gating = noisy_gating

    def gates(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, K)
        logits = x @ self.gate
        if self.noisy_gating and self.training:
            logits = logits + torch.randn_like(logits) * (F.softplus(x @ self.gate_noise) + 1e-2)
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dimension, n_experts, hidden = self.projection.shape
        experts = self.projection.view(dimension, n_experts * hidden)  # (D, K*H)
        projected = (self.dropout(x) @ experts).view(-1, n_experts, hidden)  # (N, K, H)
        centered = projected - torch.einsum("kd,dkh->kh", self.whitening_bias, self.projection)  # (N, K, H)
        return torch.bmm(self.gates(x).unsqueeze(1), centered).squeeze(1)  # (N, H)


class UniSRec(SequentialRecommender):
    """SASRec's encoder over v_i = MoE(x_i) + e_i; ``text_embeddings``: (n_items, D), row i
    for ``EvalData`` item i (frozen, not trained)."""

    def __init__(self, text_embeddings: np.ndarray, config: UniSRecConfig):
        n_items, text_dimension = text_embeddings.shape
        with seeded(config.seed):  # every initial value, biases included, from the seed
            super().__init__(n_items, config)
            self.item_embedding = nn.Embedding(n_items + 1, config.hidden, padding_idx=0)
            xavier_init(self)  # before the adaptor exists: it has its own initialization
            self.adaptor = MoEAdaptor(text_dimension, config.hidden, config.n_experts, config.text_dropout, config.noisy_gating)
        text = torch.zeros(n_items + 1, text_dimension)  # row 0: padding, masked by the encoder
        text[1:] = torch.as_tensor(np.asarray(text_embeddings, dtype=np.float32))
        self.register_buffer("text", text)

    def item_vectors(self) -> torch.Tensor:  # (n_items + 1, H)
        return self.adaptor(self.text) + self.item_embedding.weight

    def output_space(self, hidden: torch.Tensor, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        temperature = self.config.temperature
        if temperature is None:
            return hidden, vectors
        return F.normalize(hidden, dim=-1) / temperature, F.normalize(vectors, dim=-1)


def tag_text(tags: Sequence[str]) -> str:
    """The text UniSRec embeds for an item: "tags: a, b, c" ("" for an item without tags)."""
    return f"tags: {', '.join(tags)}" if tags else ""


def item_texts(item_ids: Sequence[str], documents: Mapping[str, Sequence[str]]) -> list[str]:
    """One text per catalog item, in catalog order (``documents`` as ``load_tag_documents``)."""
    return [tag_text(documents.get(item_id, ())) for item_id in item_ids]
