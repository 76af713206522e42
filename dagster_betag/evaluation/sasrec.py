"""SASRec (Kang & McAuley, ICDM 2018): a causal self-attention sequence encoder over item
embeddings, trained for next-item prediction, and the trainer and ranking path that every
sequential model here shares (library code, no Dagster).

Protocol. A model trains on each user's train sequence only. Early stopping watches the
validation N@10 (input = train, target = the validation item, full ranking with the history
masked) and restores the best weights. Ranks for a split use the same path: input = the
split's history (the test history includes the validation item), scores of every item,
ranks from ``metrics.target_rank`` so masking and ties match every other method.

Item indices: ``EvalData`` index i is embedding row i + 1; row 0 is padding.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dagster_betag.evaluation.data import EvalData
from dagster_betag.evaluation.metrics import ndcg_at, target_rank

Log = Callable[[str], None]


@dataclass(frozen=True)
class SASRecConfig:
    """Architecture and training of SASRec (and of the models that reuse its encoder).

    Architecture as in the paper: hidden 64, 2 blocks, 1 head, max length 50, dropout 0.2
    (its MovieLens-1M setting), Adam with beta2 0.98. The training differs, for strength
    and for a budget of about a minute per run on two shared CPU cores (MovieLens
    latest-small, 610 users, 3,650 items):

    - ``loss``: "ce" (default) = softmax cross-entropy over all items at every position;
      "bce" = the paper's binary cross-entropy with one sampled negative per position.
      Full CE is clearly stronger and is what recent reproductions use (Klenitskiy &
      Vasilev, RecSys 2023: SASRec with CE beats BERT4Rec; Petrov & Macdonald, gSASRec,
      RecSys 2023: one-negative BCE leaves SASRec overconfident); with a few thousand
      items the full softmax is affordable.
    - ``train_windows``: "all" (default) cuts each train sequence into consecutive windows
      of ``max_length`` predictions, so every train interaction is a target once per
      epoch; "last" is the paper's sampler (each user's last ``max_length`` items only),
      which on long MovieLens histories sees under a third of the data and needs about
      three times the epochs for a lower validation N@10.
    - ``batch_size`` 32, ``lr`` 3e-3: per epoch, 32-window batches are faster than the
      paper's 128 on a CPU (the positions x items logits stay in cache), and 1e-3 needs
      several times the epochs.
    - ``max_epochs`` 10, ``patience`` 3, ``eval_every`` 1 (both counted in epochs):
      validation N@10 after every epoch; training stops after ``patience`` epochs without
      a better one, and the best weights are restored.
    - ``bf16``: the training steps' matrix products in bfloat16 (autocast; parameters,
      losses and all ranking stay float32). None = where the device multiplies bfloat16
      natively, which on such CPUs makes a step about 1.5x faster.
    """

    hidden: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    max_length: int = 50
    dropout: float = 0.2
    lr: float = 3e-3
    batch_size: int = 32
    max_epochs: int = 10
    patience: int = 3
    eval_every: int = 1
    loss: Literal["ce", "bce"] = "ce"
    train_windows: Literal["all", "last"] = "all"
    seed: int = 0
    device: str = "auto"
    bf16: bool | None = None

    def __post_init__(self) -> None:
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"loss must be 'ce' or 'bce', not {self.loss!r}")
        if self.train_windows not in ("all", "last"):
            raise ValueError(f"train_windows must be 'all' or 'last', not {self.train_windows!r}")
        if self.patience < self.eval_every:
            raise ValueError("patience counts epochs and must be at least eval_every")


@dataclass(frozen=True)
class TrainingResult:
    """What early stopping saw: the best epoch (1-based), its validation N@10, how many
    epochs ran and how long training took (validation included)."""

    best_epoch: int
    best_validation_ndcg: float
    epochs: int
    seconds: float

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(self.epochs, 1)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def use_bf16(config: SASRecConfig, device: torch.device) -> bool:
    if config.bf16 is not None:
        return config.bf16
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # emulated bfloat16 (no AVX512-BF16 / AMX) would be slower than float32
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for the block (initialization, dropout, gating noise) and restore the
    caller's RNG state afterwards, so runs are reproducible without global side effects."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class PointWiseFeedForward(nn.Module):
    """FFN(x) = x + Dropout(ReLU(Dropout(x W1 + b1)) W2 + b2), the paper's two 1x1
    convolutions (written as linear layers) with the reference code's inner residual."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.inner = nn.Linear(hidden, hidden)
        self.outer = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, L, H)
        return x + self.dropout(self.outer(torch.relu(self.dropout(self.inner(x)))))


class SelfAttentionBlock(nn.Module):
    """One SASRec block, as in the authors' code:

    q = LN(x);  x = q + MHA(q, x, x; causal);  x = FFN(LN(x));  x = x * m

    (the residual adds the normalized query, a quirk of the reference implementation kept
    for faithfulness; m zeroes padding positions)."""

    def __init__(self, hidden: int, n_heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attention = nn.MultiheadAttention(hidden, n_heads, dropout=dropout, batch_first=True)
        self.feed_forward_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.feed_forward = PointWiseFeedForward(hidden, dropout)

    def forward(self, x: torch.Tensor, causal: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # x: (B, L, H); causal: (L, L) bool, True = may not attend; keep: (B, L, 1) float
        q = self.attention_norm(x)
        attended, _ = self.attention(q, x, x, attn_mask=causal, need_weights=False)
        x = self.feed_forward(self.feed_forward_norm(q + attended))
        return x * keep


class SequenceEncoder(nn.Module):
    """Item vectors of a left-padded sequence -> one hidden state per position.

    E = Dropout(sqrt(H) * V + P) * m, then the blocks, then a final layer norm. P is a
    learned embedding of the absolute position in the window; sequences are right-aligned,
    so the last position is always the most recent item. Position t attends to positions
    <= t only, so its output predicts item t + 1 from items <= t."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.scale = math.sqrt(config.hidden)
        self.positions = nn.Embedding(config.max_length, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(config.hidden, config.n_heads, config.dropout) for _ in range(config.n_blocks)
        )
        self.final_norm = nn.LayerNorm(config.hidden, eps=1e-8)
        causal = torch.triu(torch.ones(config.max_length, config.max_length, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, vectors: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        # vectors: (B, L, H) item vectors; sequence: (B, L) item rows, 0 = padding -> (B, L, H)
        length = sequence.shape[1]
        keep = (sequence != 0).unsqueeze(-1).to(vectors.dtype)  # (B, L, 1)
        x = self.dropout(vectors * self.scale + self.positions.weight[:length]) * keep
        for block in self.blocks:
            x = block(x, self.causal[:length, :length], keep)
        return self.final_norm(x)


class SequentialRecommender(nn.Module):
    """A sequence encoder over item vectors; the score of item i after a sequence is
    s_i = <h, v_i> in the space ``output_space`` maps to (a plain dot product here).

    Subclasses define ``item_vectors``: (n_items + 1, H), row 0 = padding."""

    def __init__(self, n_items: int, config: SASRecConfig):
        super().__init__()
        self.n_items = n_items
        self.config = config
        self.encoder = SequenceEncoder(config)

    def item_vectors(self) -> torch.Tensor:
        raise NotImplementedError

    def output_space(self, hidden: torch.Tensor, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where scores are dot products; identity for SASRec."""
        return hidden, vectors

    def forward(self, sequence: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        # sequence: (B, L) item rows -> (B, L, H); ``vectors`` lets a training step compute
        # the item table once for both the input and the output side
        vectors = self.item_vectors() if vectors is None else vectors
        return self.encoder(vectors[sequence], sequence)

    def score_all(self, sequence: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded histories -> (B, n_items) scores after their last item."""
        vectors = self.item_vectors()
        hidden, table = self.output_space(self(sequence, vectors)[:, -1], vectors[1:])
        return hidden @ table.T


class SASRec(SequentialRecommender):
    """Item ID embeddings shared by the input and the output side, as in the paper."""

    def __init__(self, n_items: int, config: SASRecConfig):
        with seeded(config.seed):  # every initial value, biases included, from the seed
            super().__init__(n_items, config)
            self.item_embedding = nn.Embedding(n_items + 1, config.hidden, padding_idx=0)
            xavier_init(self)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight


def xavier_init(module: nn.Module) -> None:
    """Xavier-normal for every matrix, as the reference PyTorch port does; vectors (biases,
    layer-norm gains) keep their defaults and the padding row stays zero."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_normal_(parameter)
    for submodule in module.modules():
        if isinstance(submodule, nn.Embedding) and submodule.padding_idx is not None:
            with torch.no_grad():
                submodule.weight[submodule.padding_idx].zero_()


# --- training data -------------------------------------------------------------------


def training_windows(data: EvalData, max_length: int, all_windows: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs and next-item targets from the learnable train sequences (item rows, 0 =
    padding; new items dropped, ``EvalData.learnable_train``).

    A train sequence x_1..x_n gives the pairs (x_t, x_{t+1}); they are cut from the end
    into windows of ``max_length`` pairs (only the last window unless ``all_windows``),
    left-padded. Returns inputs (W, L), targets (W, L), and each window's user (W,)."""
    inputs, targets, owners = [], [], []
    for user_index, user in enumerate(data.users):
        rows = data.indices(data.learnable_train(user)) + 1
        for end in range(len(rows), 1, -max_length):
            start = max(end - max_length - 1, 0)
            window = rows[start:end]
            pad = max_length - (len(window) - 1)
            inputs.append(np.pad(window[:-1], (pad, 0)))
            targets.append(np.pad(window[1:], (pad, 0)))
            owners.append(user_index)
            if not all_windows:
                break
    return np.stack(inputs), np.stack(targets), np.asarray(owners, dtype=np.int64)


def history_batch(data: EvalData, split: str, max_length: int, n_recent: int | None = None) -> np.ndarray:
    """(n_users, L) the last ``max_length`` (or ``n_recent``, if fewer) items of the ``split``
    history of each user that split ranks (``data.split_users``), left-padded to L = ``max_length`` so the last item keeps the position
    it had in training."""
    keep = max_length if n_recent is None else min(n_recent, max_length)
    users = data.split_users(split)
    batch = np.zeros((len(users), max_length), dtype=np.int64)
    for row, user in enumerate(users):
        history = data.indices(user.history(split)[-keep:]) + 1
        batch[row, max_length - len(history) :] = history
    return batch


def sample_negatives(targets: np.ndarray, owners: np.ndarray, user_items: Sequence[np.ndarray], n_items: int, rng: np.random.Generator) -> np.ndarray:
    """One negative item row per target, uniform over the items the user never trained on
    (the paper's sampler); padding positions get 0."""
    negatives = rng.integers(1, n_items + 1, size=targets.shape)
    for row, user in enumerate(owners):
        clash = np.isin(negatives[row], user_items[user])
        while clash.any():
            negatives[row, clash] = rng.integers(1, n_items + 1, size=int(clash.sum()))
            clash = np.isin(negatives[row], user_items[user])
    return np.where(targets == 0, 0, negatives)


# --- training and ranking ------------------------------------------------------------


def train(model: SequentialRecommender, data: EvalData, config: SASRecConfig, log: Log | None = None, name: str = "sasrec") -> TrainingResult:
    """Train ``model`` on the train sequences with early stopping on validation N@10 and
    leave it holding the best weights (on ``config.device``, in eval mode).

    CE:  L = -sum_t log softmax_i(s_{t,i})[x_{t+1}] over non-padding positions t;
    BCE: L = -sum_t log sigma(s_{t,x_{t+1}}) + log(1 - sigma(s_{t,neg_t})).
    Both are averaged over the non-padding positions of the batch."""
    device = resolve_device(config.device)
    model.to(device)
    bf16 = use_bf16(config, device)
    rng = np.random.default_rng(config.seed)
    inputs, targets, owners = training_windows(data, config.max_length, config.train_windows == "all")
    user_items = [data.indices(data.learnable_train(user)) + 1 for user in data.users] if config.loss == "bce" else []
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
    best_ndcg, best_epoch, best_state, epoch = -1.0, 0, None, 0
    started = time.perf_counter()
    with seeded(config.seed):
        for epoch in range(1, config.max_epochs + 1):
            epoch_started = time.perf_counter()
            model.train()
            negatives = sample_negatives(targets, owners, user_items, model.n_items, rng) if config.loss == "bce" else None
            total, count = 0.0, 0
            for batch in np.array_split(rng.permutation(len(inputs)), math.ceil(len(inputs) / config.batch_size)):
                sequence = torch.from_numpy(inputs[batch]).to(device)  # (B, L)
                target = torch.from_numpy(targets[batch]).to(device)  # (B, L)
                negative = None if negatives is None else torch.from_numpy(negatives[batch]).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss, n_positions = _batch_loss(model, sequence, target, negative)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * n_positions
                count += n_positions
            line = f"{name} epoch {epoch}: loss {total / max(count, 1):.4f}"
            if epoch % config.eval_every == 0 or epoch == config.max_epochs:
                ndcg = float(np.mean([ndcg_at(r) for r in rank_split(model, data, "validation")]))
                line += f", validation N@10 {ndcg:.4f}"
                if ndcg > best_ndcg:
                    best_ndcg, best_epoch = ndcg, epoch
                    best_state = copy.deepcopy(model.state_dict())
            if log is not None:
                log(f"{line}, {time.perf_counter() - epoch_started:.1f} s")
            if epoch - best_epoch >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainingResult(best_epoch, best_ndcg, epoch, time.perf_counter() - started)


def _batch_loss(model: SequentialRecommender, sequence: torch.Tensor, target: torch.Tensor, negative: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    vectors = model.item_vectors()  # (n_items + 1, H)
    present = target != 0  # (B, L)
    hidden = model(sequence, vectors)[present]  # (P, H), P non-padding positions
    positive = target[present]  # (P,)
    if negative is None:
        hidden, table = model.output_space(hidden, vectors[1:])
        loss = F.cross_entropy(hidden @ table.T, positive - 1)  # logits (P, n_items)
    else:
        hidden, table = model.output_space(hidden, vectors)
        positive_logit = (hidden * table[positive]).sum(-1)  # (P,)
        negative_logit = (hidden * table[negative[present]]).sum(-1)  # (P,)
        loss = F.binary_cross_entropy_with_logits(positive_logit, torch.ones_like(positive_logit)) + F.binary_cross_entropy_with_logits(
            negative_logit, torch.zeros_like(negative_logit)
        )
    return loss, int(present.sum())


@torch.no_grad()
def rank_split(
    model: SequentialRecommender,
    data: EvalData,
    split: str,
    candidates: Sequence[np.ndarray] | None = None,
    batch_size: int = 256,
    setting: str = "user",
) -> np.ndarray:
    """(n_users,) 1-indexed rank of each user's ``split`` target by ``metrics.target_rank``:
    scores after the split's history (``setting`` "user") or after only its last item
    ("item"), the whole history masked either way, among all items or among the user's
    ``candidates`` (item index arrays, one per user in ``data.split_users(split)`` order)."""
    if setting not in ("user", "item"):
        raise ValueError(f"unknown setting {setting!r}; use user or item")
    users = data.split_users(split)
    if candidates is not None and len(candidates) != len(users):
        raise ValueError(f"{len(candidates)} candidate sets for {len(users)} users")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    histories = history_batch(data, split, model.config.max_length, n_recent=1 if setting == "item" else None)
    ranks = np.empty(len(users), dtype=np.int64)
    for start in range(0, len(users), batch_size):
        scores = model.score_all(torch.from_numpy(histories[start : start + batch_size]).to(device)).cpu().numpy()
        for offset, user_scores in enumerate(scores):
            user = users[start + offset]
            ranks[start + offset] = target_rank(
                user_scores,
                data.index[user.target(split)],
                masked=data.indices(user.history(split)),
                candidates=None if candidates is None else candidates[start + offset],
            )
    model.train(was_training)
    return ranks
