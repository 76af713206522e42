"""Diverse (group) beam search with Hamming diversity, for any transformers causal LM.

transformers 5 removed `num_beam_groups` / `diversity_penalty` from `generate` (the code moved to the Hub, which
we can neither fetch nor trust), but BETag asks the LLM for several *different* tag lists per item. This module
re-implements transformers 4.x's `_group_beam_search` (Vijayakumar et al. 2016, "Diverse Beam Search") in plain
PyTorch: batched over prompts, one forward per prompt, then one token per beam per step through the KV cache.

Shapes in comments use: N = prompts in the batch, n = prompts still being decoded (a prompt leaves the batch as
soon as all its groups are done; the beams of a done group stop running through the model at once), G = groups,
B = beams per group, V = vocabulary, P = padded prompt length, t = tokens generated so far, T = max_new_tokens,
K = candidates kept per group and step, R = rows of the key/value cache (the running beams; twice as many with
contrastive decoding, whose no-item rows follow the item rows).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from dagster_betag.knobs import knob
from dagster_betag.llm.kv_cache import make_growing
from dagster_betag.llm.prefix import repeated_cache
from dagster_betag.llm.rules import LogitsRule

if TYPE_CHECKING:
    from transformers import Cache

@dataclass(frozen=True)
class DiverseBeamConfig:
    """The knobs of diverse beam search (the official BETag run: 40 groups of 1 beam, lambda 1.0,
    64 new tokens; these defaults fit a 2-core CPU)."""

    num_groups: int = knob(
        4, "G: groups of beams decoded per item, each pushed away from the tokens of the earlier ones."
    )
    beams_per_group: int = knob(1, "B: beams per group (ordinary beam search within a group).")
    diversity_penalty: float = knob(
        1.0, "lambda: subtracted from a token's log-prob once per beam of an earlier group that chose it at this step."
    )
    min_new_tokens: int = knob(0, "EOS is banned before this many generated tokens.")
    max_new_tokens: int = knob(32, "T: tokens generated per beam at most.")
    length_penalty: float = knob(
        1.0, "As transformers: a finished beam scores sum_logprobs / len ** length_penalty (len counts the EOS)."
    )
    early_stopping: bool = knob(
        True,
        "As transformers' beam search: a group stops once it has B finished hypotheses; false also asks that its "
        "best running beam cannot beat the worst of them.",
    )
    contrastive_alpha: float = knob(
        0.0,
        "alpha of contrastive decoding: a token scores log p(token | item prompt) - alpha * log p(token | no-item "
        "prompt), so tokens the model writes whatever the item get pushed down; 0 is off (the no-item prompt is not "
        "run at all).",
    )
    plausibility_beta: float = knob(
        0.1,
        "beta of contrastive decoding: only tokens with p(token | item) >= beta * the best token's p(token | item) "
        "may be chosen (the rest score -inf), so the contrast cannot promote tokens the item makes unlikely.",
    )

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.beams_per_group < 1:
            raise ValueError("num_groups and beams_per_group must be at least 1")
        if self.diversity_penalty < 0:
            raise ValueError("diversity_penalty must be >= 0")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens or self.max_new_tokens < 1:
            raise ValueError("need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens >= 1")
        if self.contrastive_alpha < 0 or not 0 <= self.plausibility_beta <= 1:
            raise ValueError("need contrastive_alpha >= 0 and 0 <= plausibility_beta <= 1")


@dataclass
class DiverseBeamOutput:
    """Hypotheses ordered group 0's beams best-first, then group 1's, ...; L is the longest one's length."""

    sequences: torch.LongTensor  # (N, G*B, L) generated tokens only, EOS included, then pad_token_id
    scores: torch.FloatTensor  # (N, G*B) length-normalized beam scores


@torch.no_grad()
def diverse_beam_search(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.LongTensor,
    config: DiverseBeamConfig,
    *,
    eos_token_id: int | list[int],
    pad_token_id: int,
    logits_processor: LogitsRule | None = None,
    prefix_cache: Cache | None = None,
    contrast_ids: torch.LongTensor | None = None,
    contrast_mask: torch.LongTensor | None = None,
) -> DiverseBeamOutput:
    """Decode G groups of B beams per left-padded prompt, as transformers 4.x `generate(num_beam_groups=G, ...)`.

    Each step, the groups are searched in order 0..G-1. Group g's next-token log-probs (after `logits_processor`
    and the `min_new_tokens` EOS ban) are lowered by `diversity_penalty * c(v)`, where c(v) counts the beams of
    groups 0..g-1 of the same prompt that continue with token v at this step (Hamming diversity); then ordinary
    beam search runs within the group: the top K = max(2, 1 + #eos) * B continuations of its B beams, EOS among
    the top B finish (stored with score sum / len ** length_penalty, len counting the EOS), and the best B
    non-EOS continue. As in 4.x, where the penalty is a logits processor, the *penalized* log-probs are what
    beam scores accumulate, so returned scores include the penalties a beam paid.

    Deliberate differences from 4.x:
    - a group that is done no longer counts for diversity (4.x counted it as B `pad_token_id` tokens, which
      penalizes EOS for later groups when pad == eos);
    - two beam-search details follow transformers 5's `_beam_search`, which this reproduces exactly for G = 1:
      see `_add_running_beams` and `_groups_done`;
    - `logits_processor` runs before the diversity penalty (4.x ran it after), the same for bans and biases;
    - hypotheses come back per group, rather than sorted across groups.

    `input_ids` / `attention_mask`: (N, P), LEFT-padded. `logits_processor(sequences, log_probs)` sees the
    prompt plus the tokens generated so far, (rows, P + t), for the rows it scores, (rows, V).
    `prefix_cache`: the one-row key/value cache of a prefix of Q tokens that every prompt starts with
    (`llm/prefix.py`: the prompts are then laid out as prefix + left-padded rest, so only the first
    column after the prefix may be padding); the prompts' first Q tokens are not run again.

    Contrastive decoding (``config.contrastive_alpha`` = alpha > 0; Li et al. 2023, Shi et al. 2024):
    `contrast_ids` / `contrast_mask` (1, P), laid out as the prompts (same width, same prefix), is one prompt
    without the item. Every beam also runs through the model after it (its rows ride along in the same cache
    and forward passes, R = 2 n*G*B), and the next-token score that replaces the log-prob above is

        s(v) = log p(v | item prompt, beam) - alpha * log p(v | contrast prompt, beam)   if v is plausible,
        s(v) = -inf                                                                     otherwise,
        plausible: p'(v | item prompt, beam) >= beta * max_u p'(u | item prompt, beam),

    beta = ``config.plausibility_beta``, p' the item log-probs after `logits_processor` and the EOS ban.
    The rules see the item's log-probs, not s: their bans and constraints are what makes a token possible,
    so the plausibility set is taken among the tokens they allow (against the unconstrained maximum, a
    vocabulary constraint could leave no plausible token at all), and s is only ever finite where they
    left the item log-prob finite. Beam scores then accumulate s (with the diversity penalty). With
    alpha = 0 the contrast prompt is not run and the decode is the plain one.
    """
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError("input_ids and attention_mask must both be (batch, prompt_len)")
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("prompts must be left-padded: the last column of attention_mask must be all ones")
    contrastive = config.contrastive_alpha > 0
    if contrastive and (contrast_ids is None or contrast_mask is None or contrast_ids.shape != (1, input_ids.shape[1])):
        raise ValueError("contrastive decoding needs contrast_ids and contrast_mask, (1, prompt_len)")
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id, device=input_ids.device)
    state = _Search.start(input_ids, attention_mask, config)
    results = _empty_hypotheses(input_ids.shape[0], config, input_ids.device)

    copies = config.num_groups * config.beams_per_group
    prompts = (input_ids, contrast_ids) if contrastive else (input_ids,)
    masks = (attention_mask, contrast_mask) if contrastive else (attention_mask,)
    log_probs, cache = _prefill(
        model, torch.cat(prompts), torch.cat(masks), copies, prefix_cache, contrastive, config.max_new_tokens
    )
    # (n*G*B,) where each beam's history sits in the cache (its item row), -1 for none
    cache_row = torch.arange(input_ids.shape[0] * copies, device=input_ids.device)
    for step in range(config.max_new_tokens):
        log_probs = _next_token_scores(log_probs, state, step, eos, config, logits_processor)
        rows = _search_step(state, log_probs, step, eos, config)  # (n, G, B)
        if step + 1 == config.max_new_tokens:
            _add_running_beams(state, config)
            _store(results, state, torch.ones_like(state.item, dtype=torch.bool))
            break
        state.done |= _groups_done(state, step, config)
        retired = state.done.all(dim=1)  # (n,)
        if bool(retired.any()):
            _store(results, state, retired)
            if bool(retired.all()):
                break
        state = state.select(~retired)
        # only beams of groups still searching stay in the cache and run through the model: a done group's
        # beams would only burn compute (they no longer count for diversity either)
        live = (~state.done)[..., None].expand_as(state.beam_scores).flatten()  # (n*G*B,)
        _follow_beams(cache, cache_row[rows[~retired].flatten()[live]], int((cache_row >= 0).sum()), contrastive)
        cache_row = torch.full_like(live, -1, dtype=torch.long)
        cache_row[live] = torch.arange(int(live.sum()), device=live.device)
        log_probs = _decode_step(model, cache, state, live, contrast_mask if contrastive else None)
    return _output(results, pad_token_id)


class _Hypotheses(NamedTuple):
    """Finished hypotheses of each group, best first; an empty slot scores -inf."""

    tokens: torch.Tensor  # (..., B, T) generated tokens, junk past `lengths`
    lengths: torch.Tensor  # (..., B)
    scores: torch.Tensor  # (..., B) length-normalized


def _empty_hypotheses(n: int, config: DiverseBeamConfig, device: torch.device) -> _Hypotheses:
    shape = (n, config.num_groups, config.beams_per_group)
    return _Hypotheses(
        tokens=torch.zeros((*shape, config.max_new_tokens), dtype=torch.long, device=device),
        lengths=torch.zeros(shape, dtype=torch.long, device=device),
        scores=torch.full(shape, -torch.inf, device=device),
    )


@dataclass
class _Search:
    """Search state of the prompts still being decoded; every field is indexed by prompt first."""

    item: torch.Tensor  # (n,) position of the prompt in the caller's batch
    prompt: torch.Tensor  # (n, P) left-padded prompt ids
    prompt_mask: torch.Tensor  # (n, P)
    generated: torch.Tensor  # (n, G, B, t) tokens of the running beams
    beam_scores: torch.Tensor  # (n, G, B) accumulated (penalized) log-probs of the running beams
    done: torch.Tensor  # (n, G) group has stopped searching
    hyp_tokens: torch.Tensor  # (n, G, B, T)
    hyp_lengths: torch.Tensor  # (n, G, B)
    hyp_scores: torch.Tensor  # (n, G, B)

    @classmethod
    def start(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, config: DiverseBeamConfig) -> _Search:
        n, G, B = input_ids.shape[0], config.num_groups, config.beams_per_group
        device = input_ids.device
        # only the first beam of each group starts live, so a group's B beams do not all pick the same token
        beam_scores = torch.full((n, G, B), -1e9, device=device)
        beam_scores[..., 0] = 0.0
        return cls(
            torch.arange(n, device=device),
            input_ids,
            attention_mask,
            input_ids.new_zeros((n, G, B, 0)),
            beam_scores,
            torch.zeros((n, G), dtype=torch.bool, device=device),
            *_empty_hypotheses(n, config, device),
        )

    def select(self, keep: torch.Tensor) -> _Search:
        """The state of the prompts where `keep` (n,) is true."""
        return _Search(*(getattr(self, f.name)[keep] for f in fields(self)))

    def hypotheses(self, group: int | slice) -> _Hypotheses:
        return _Hypotheses(self.hyp_tokens[:, group], self.hyp_lengths[:, group], self.hyp_scores[:, group])

    def set_hypotheses(self, group: int | slice, hyps: _Hypotheses) -> None:
        self.hyp_tokens[:, group], self.hyp_lengths[:, group], self.hyp_scores[:, group] = hyps

    def sequences(self) -> torch.Tensor:
        """(n*G*B, P + t) prompt + generated tokens of every running beam, as logits processors expect."""
        n, G, B, t = self.generated.shape
        prompt = self.prompt[:, None, None, :].expand(n, G, B, -1)
        return torch.cat([prompt, self.generated], dim=-1).reshape(n * G * B, -1)


def _prefill(
    model, input_ids, attention_mask, copies: int, prefix_cache, contrastive: bool, room: int
) -> tuple[torch.Tensor, Cache]:
    """Run each prompt once, then give each of its `copies` beams a copy of the cache (they all share it).

    `input_ids` (N, P), or (N + 1, P) when `contrastive`: the contrast prompt last, whose row every beam of every
    prompt gets a copy of too, after the item rows. Returns (R, V) log-probs and the cache of R rows, with room
    for `room` more tokens per row."""
    position_ids = attention_mask.long().cumsum(-1) - 1  # (N, P) as transformers does for left padding
    position_ids = position_ids.masked_fill(attention_mask == 0, 1)
    done = 0 if prefix_cache is None else prefix_cache.get_seq_length()  # Q prompt tokens already cached
    if done and not bool(attention_mask[:, :done].all()):
        raise ValueError("with a prefix cache, the prompts must start with the prefix, unpadded")
    out = model(
        input_ids=input_ids[:, done:],
        attention_mask=attention_mask,
        position_ids=position_ids[:, done:],
        past_key_values=repeated_cache(prefix_cache, input_ids.shape[0], room) if done else None,
        use_cache=True,
        **_last_logits_only(model),
    )
    n_items = input_ids.shape[0] - contrastive
    origin = torch.arange(n_items, device=input_ids.device).repeat_interleave(copies)  # (N*G*B,)
    if contrastive:
        origin = torch.cat([origin, origin.new_full(origin.shape, n_items)])  # (2*N*G*B,)
    cache = make_growing(out.past_key_values, room)  # the model made it when there is no prefix
    cache.reorder_cache(origin)
    log_probs = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # (N (+ 1), V)
    return log_probs[origin], cache  # (R, V)


def _last_logits_only(model) -> dict:
    """Skip the LM head on all prompt positions but the last, where the model supports it (most do)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _follow_beams(cache: Cache, rows: torch.Tensor, cached_beams: int, contrastive: bool) -> None:
    """Reorder the cache so that row i holds the history of old row ``rows[i]`` (each beam's origin; beams
    of done groups and retired prompts left out); with `contrastive`, the no-item rows (after the
    `cached_beams` item rows) follow their item rows. Skipped when nothing moves, the usual case with one beam
    per group: a copy of the whole cache per step is a tenth of the decoding time on a CPU. (The row count is
    passed in: a DynamicCache's `batch_size` is -1.)"""
    if contrastive:
        rows = torch.cat([rows, rows + cached_beams])  # (R,)
    if rows.numel() == cached_beams * (1 + contrastive) and bool(
        (rows == torch.arange(rows.numel(), device=rows.device)).all()
    ):
        return
    cache.reorder_cache(rows)


def _decode_step(model, cache: Cache, state: _Search, live: torch.Tensor, contrast_mask) -> torch.Tensor:
    """Feed the newest token of each running beam where `live` (n*G*B,) through the cache, and with
    `contrast_mask` (1, P) the same token after the contrast prompt; (n*G*B, V) next-token log-probs, or
    (2*n*G*B, V): the item rows, then the no-item rows; zeros for the beams left out."""
    n, G, B, t = state.generated.shape
    tokens = state.generated[..., -1].reshape(-1, 1)[live]  # (rows, 1)
    mask = torch.cat([state.prompt_mask, state.prompt_mask.new_ones((n, t))], dim=1)  # (n, P + t)
    position = state.prompt_mask.sum(dim=1, keepdim=True) + (t - 1)  # (n, 1) real prompt length + t - 1
    mask, position = mask.repeat_interleave(G * B, dim=0)[live], position.repeat_interleave(G * B, dim=0)[live]
    if contrast_mask is not None:
        rows = tokens.shape[0]
        contrast = torch.cat([contrast_mask, contrast_mask.new_ones((1, t))], dim=1)  # (1, P + t)
        tokens = tokens.repeat(2, 1)  # (2*rows, 1)
        mask = torch.cat([mask, contrast.expand(rows, -1)])  # (2*rows, P + t)
        position = torch.cat([position, (contrast_mask.sum(dim=1, keepdim=True) + (t - 1)).expand(rows, 1)])
    out = model(
        input_ids=tokens,
        attention_mask=mask,
        position_ids=position,
        past_key_values=cache,
        use_cache=True,
    )
    log_probs = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # (rows or 2*rows, V)
    if bool(live.all()):
        return log_probs
    beams = live.nonzero().squeeze(1)
    halves = log_probs.split(beams.numel())  # the item rows (and the no-item rows)
    return torch.cat([half.new_zeros((live.numel(), half.shape[-1])).index_copy_(0, beams, half) for half in halves])


def _next_token_scores(log_probs, state: _Search, step: int, eos, config: DiverseBeamConfig, processor):
    """The caller's processor, then the EOS ban before min_new_tokens, on the item rows; with contrastive
    decoding, then the contrast against the no-item rows: (R, V) -> (n*G*B, V)."""
    log_probs, *no_item = log_probs.tensor_split(2) if config.contrastive_alpha > 0 else (log_probs,)
    if processor is not None:
        log_probs = processor(state.sequences(), log_probs)
    if step < config.min_new_tokens:
        log_probs = log_probs.index_fill(1, eos, -torch.inf)
    if no_item:
        log_probs = contrastive_scores(log_probs, no_item[0], config.contrastive_alpha, config.plausibility_beta)
    return log_probs


def contrastive_scores(log_probs: torch.Tensor, no_item_log_probs: torch.Tensor, alpha: float, beta: float):
    """(rows, V) scores s(v) = log_probs(v) - alpha * no_item_log_probs(v) where log_probs(v) >= log(beta) +
    max_u log_probs(u) (the plausibility set: p(v) >= beta * max p), -inf elsewhere."""
    cutoff = log_probs.max(dim=-1, keepdim=True).values + (math.log(beta) if beta > 0 else -math.inf)  # (rows, 1)
    return torch.where(log_probs >= cutoff, log_probs - alpha * no_item_log_probs, -torch.inf)


def _search_step(state: _Search, log_probs, step: int, eos, config: DiverseBeamConfig) -> torch.Tensor:
    """Advance every group of every prompt by one token, in group order; returns (n, G, B) cache rows to follow."""
    n, G, B, t = state.generated.shape
    log_probs = log_probs.view(n, G, B, -1)
    searching = (~state.done).to(log_probs.dtype)  # (n, G) groups that count for diversity at this step
    chosen = log_probs.new_zeros((n, log_probs.shape[-1]))  # (n, V) beams of earlier groups continuing with v
    origins, tokens = [], []
    for g in range(G):
        scores = log_probs[:, g] - config.diversity_penalty * chosen[:, None, :]  # (n, B, V)
        origin, token = _group_step(state, g, scores, step, eos, config)
        chosen.scatter_add_(1, token, searching[:, g, None].expand(n, B))
        origins.append(origin)
        tokens.append(token)
    origin, token = torch.stack(origins, dim=1), torch.stack(tokens, dim=1)  # (n, G, B) each
    history = state.generated.gather(2, origin[..., None].expand(n, G, B, t))
    state.generated = torch.cat([history, token[..., None]], dim=-1)  # (n, G, B, t + 1)
    group_offset = torch.arange(G, device=origin.device)[None, :, None] * B
    return torch.arange(n, device=origin.device)[:, None, None] * (G * B) + group_offset + origin


def _group_step(state: _Search, g: int, scores, step: int, eos, config: DiverseBeamConfig):
    """One step of ordinary beam search within group g (4.x `BeamSearchScorer.process`), for all n prompts.

    scores: (n, B, V) processed log-probs. Returns the B continuing beams' origins and tokens, (n, B) each,
    best first.
    """
    n, B, V = scores.shape
    totals = (scores + state.beam_scores[:, g, :, None]).view(n, B * V)
    top_scores, top_ids = totals.topk(max(2, 1 + eos.numel()) * B, dim=1)  # (n, K) best first
    origin, token = top_ids // V, top_ids % V  # (n, K) beam within the group, token id
    is_eos = torch.isin(token, eos)
    _store_finished(state, g, step, top_scores, origin, token, is_eos, config)
    # K leaves at least B non-EOS candidates (each beam has at most #eos EOS continuations); take the best B
    keep = torch.argsort(is_eos.to(torch.uint8), dim=1, stable=True)[:, :B]  # (n, B) ranks
    state.beam_scores[:, g] = top_scores.gather(1, keep)
    return origin.gather(1, keep), token.gather(1, keep)


def _store_finished(state: _Search, g: int, step: int, top_scores, origin, token, is_eos, config) -> None:
    """EOS candidates ranked in the top B become hypotheses of group g, unless the group is already done."""
    n, k = token.shape
    B, T = config.beams_per_group, config.max_new_tokens
    finishing = is_eos & (torch.arange(k, device=token.device) < B) & ~state.done[:, g, None]  # (n, K)
    if not bool(finishing.any()):
        return
    history = state.generated[:, g].gather(1, origin[..., None].expand(n, k, step))  # (n, K, t)
    candidates = _Hypotheses(
        tokens=F.pad(torch.cat([history, token[..., None]], dim=-1), (0, T - step - 1)),  # (n, K, T)
        lengths=torch.full_like(token, step + 1),
        scores=torch.where(finishing, top_scores / (step + 1) ** config.length_penalty, -torch.inf),
    )
    state.set_hypotheses(g, _keep_best(state.hypotheses(g), candidates, B))


def _add_running_beams(state: _Search, config: DiverseBeamConfig) -> None:
    """Out of steps: groups still open at this last step offer their running beams as hypotheses too.

    As transformers 5 does, and 4.x `BeamSearchScorer.finalize` except that 4.x left out a group whose B-th
    hypothesis had arrived during this very step, so that its full-length beams could not compete.
    """
    t = state.generated.shape[-1]
    candidates = _Hypotheses(
        tokens=F.pad(state.generated, (0, config.max_new_tokens - t)),  # (n, G, B, T)
        lengths=torch.full_like(state.beam_scores, t, dtype=torch.long),
        scores=torch.where(state.done[..., None], -torch.inf, state.beam_scores / t**config.length_penalty),
    )
    state.set_hypotheses(slice(None), _keep_best(state.hypotheses(slice(None)), candidates, config.beams_per_group))


def _keep_best(kept: _Hypotheses, candidates: _Hypotheses, size: int) -> _Hypotheses:
    """The `size` best of both sets, best first (4.x `BeamHypotheses.add`, which keeps the best num_beams)."""
    scores = torch.cat([kept.scores, candidates.scores], dim=-1)  # (..., B + K)
    best = scores.topk(size, dim=-1).indices  # (..., B)
    tokens = torch.cat([kept.tokens, candidates.tokens], dim=-2)  # (..., B + K, T)
    return _Hypotheses(
        tokens=tokens.gather(-2, best[..., None].expand(*best.shape, tokens.shape[-1])),
        lengths=torch.cat([kept.lengths, candidates.lengths], dim=-1).gather(-1, best),
        scores=scores.gather(-1, best),
    )


def _groups_done(state: _Search, step: int, config: DiverseBeamConfig) -> torch.Tensor:
    """(n, G) groups that stop after this step (transformers' `BeamHypotheses.is_done`).

    A group needs B finished hypotheses. With early_stopping that is enough; without, transformers' heuristic
    also asks that its best running beam, normalized at the current length, not beat the worst hypothesis.
    (4.x took the best candidate of the step, EOS included; transformers 5 the best running beam, as here.)
    """
    worst = state.hyp_scores[..., -1]  # (n, G), -inf while a slot is empty
    full = worst > -torch.inf
    if config.early_stopping:
        return full
    return full & (worst >= state.beam_scores[..., 0] / (step + 1) ** config.length_penalty)


def _store(results: _Hypotheses, state: _Search, which: torch.Tensor) -> None:
    """Copy the hypotheses of the prompts where `which` (n,) is true into the caller-ordered results."""
    items = state.item[which]
    for result, hyps in zip(results, state.hypotheses(slice(None))):
        result[items] = hyps[which]


def _output(results: _Hypotheses, pad_token_id: int) -> DiverseBeamOutput:
    N, G, B, _ = results.tokens.shape
    length = int(results.lengths.max())
    tokens = results.tokens[..., :length]  # (N, G, B, L)
    past_end = torch.arange(length, device=tokens.device) >= results.lengths[..., None]
    tokens = tokens.masked_fill(past_end, pad_token_id)
    return DiverseBeamOutput(sequences=tokens.reshape(N, G * B, length), scores=results.scores.reshape(N, G * B))
