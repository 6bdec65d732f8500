"""Batched, jit-able transducer decoding: greedy, modified beam search, and SLU evaluation.

All functions take the model object and call only its public methods (`encode`, `predictor_init`,
`predictor_step`, `joint`, `intent_from_encoder`, `slots_from_tokens`), so they run eagerly, under
`nnx.jit` (model as an argument), or under `jax.jit` after `nnx.split` (see `jit_decode_with_slu`).
Shapes are static: outputs are padded to `max_len` tokens with 0 (blank).

Greedy: `lax.scan` over encoder frames; per frame a bounded `lax.while_loop` emits up to
`max_symbols_per_frame` symbols (argmax of the joint; stop at blank). The prediction network is
advanced only for rows that emitted, so each row's result equals decoding it alone.

Beam search, variant: "modified beam search" (one symbol per frame, as in k2/icefall): at every
frame each of the K hypotheses is extended by blank (hypothesis unchanged) or one non-blank token,
and the K best of the K*V candidates survive. Candidates that spell the same token sequence are
merged (their probabilities summed: a hypothesis A ending in v equals hypothesis B = A[:-1]
extended by v), so a hypothesis's score is the log of the total probability of its alignments
that the beam kept. Scores are unnormalized log-probabilities under this topology (emitting a
token moves on to the next frame); the best-scoring hypothesis per row is returned (no length
normalization). With K = 1 this is exactly greedy decoding with one symbol per frame. The beam
starts with one live (empty) hypothesis; the other K-1 slots are dead placeholders (score -1e30)
that never merge and are displaced as soon as enough live candidates exist.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:
    from jaxslu.models.transducer import Transducer

_NEG = -1e30  # "impossible" score; finite so that log-add and top-k never see inf - inf


def _where_tree(cond: jax.Array, new: Any, old: Any) -> Any:
    """Per-row select over a pytree whose leaves have the row index in front."""
    def sel(n, o):
        c = cond.reshape(cond.shape + (1,) * (n.ndim - cond.ndim))
        return jnp.where(c, n, o)
    return jax.tree.map(sel, new, old)


def _check_inputs(audio: jax.Array, audio_lengths: jax.Array) -> None:
    if audio.ndim != 2:
        raise ValueError(f"audio must be [batch, samples], got shape {audio.shape}")
    if audio_lengths.shape != audio.shape[:1]:
        raise ValueError(f"audio_lengths must have shape {audio.shape[:1]} (one per row), got "
                         f"{audio_lengths.shape}")


def greedy_frames(model: Transducer, enc: jax.Array, valid: jax.Array, pred: jax.Array,
                  pred_state: Any, *, max_symbols_per_frame: int, max_len: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
    """The greedy search over frames enc [B, T, J] (valid [B, T]) starting from the prediction
    network's output `pred` [B, J] and state: at each frame emit the argmax label while it is not
    blank, up to `max_symbols_per_frame` per frame and `max_len` in all; the prediction network
    advances only on an emission. Returns (tokens [B, max_len] 0-padded, lengths [B], pred,
    pred_state), so a caller can continue from the returned state (streaming decodes chunk by
    chunk with it)."""
    b = enc.shape[0]
    positions = jnp.arange(max_len)[None, :]

    def frame(carry, xs):
        enc_t, valid_t = xs

        def cond(c):
            i, active = c[0], c[1]
            return (i < max_symbols_per_frame) & jnp.any(active)

        def body(c):
            i, active, pred, state, tokens, lengths = c
            k = jnp.argmax(model.joint(enc_t, pred), axis=-1).astype(jnp.int32)
            emit = active & (k != 0) & (lengths < max_len)
            new_pred, new_state = model.predictor_step(k, state)
            pred = _where_tree(emit, new_pred, pred)
            state = _where_tree(emit, new_state, state)
            tokens = jnp.where(emit[:, None] & (positions == lengths[:, None]), k[:, None], tokens)
            return i + 1, emit, pred, state, tokens, lengths + emit.astype(jnp.int32)

        _, _, *rest = jax.lax.while_loop(cond, body, (jnp.int32(0), valid_t) + carry)
        return tuple(rest), None

    init = (pred, pred_state, jnp.zeros((b, max_len), jnp.int32), jnp.zeros((b,), jnp.int32))
    (pred, pred_state, tokens, lengths), _ = jax.lax.scan(
        frame, init, (jnp.swapaxes(enc, 0, 1), valid.T))
    return tokens, lengths, pred, pred_state


def greedy_from_encoder(model: Transducer, enc: jax.Array, enc_lengths: jax.Array, *,
                        max_symbols_per_frame: int = 3,
                        max_len: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding of encoder output [B, T, J] -> (tokens [B, L] int32, lengths [B] int32)."""
    if max_symbols_per_frame < 1:
        raise ValueError(f"max_symbols_per_frame={max_symbols_per_frame} must be >= 1")
    b, t, _ = enc.shape
    max_len = max_len if max_len is not None else t * max_symbols_per_frame
    if max_len < 1:
        raise ValueError(f"max_len={max_len} must be >= 1")
    pred, state = model.predictor_step(jnp.zeros((b,), jnp.int32), model.predictor_init(b))
    valid = jnp.arange(t)[None, :] < enc_lengths[:, None]  # [B, T]
    tokens, lengths, _, _ = greedy_frames(model, enc, valid, pred, state,
                                          max_symbols_per_frame=max_symbols_per_frame,
                                          max_len=max_len)
    return tokens, lengths


def greedy_decode(model: Transducer, audio: jax.Array, audio_lengths: jax.Array, *,
                  max_symbols_per_frame: int = 3,
                  max_len: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Greedy transducer decoding of audio [B, N] -> (tokens [B, L] padded 0, lengths [B]).

    L = max_len, default T * max_symbols_per_frame (T = encoder frames), which never truncates.
    """
    _check_inputs(audio, audio_lengths)
    enc, enc_lengths = model.encode(audio, audio_lengths)
    return greedy_from_encoder(model, enc, enc_lengths,
                               max_symbols_per_frame=max_symbols_per_frame, max_len=max_len)


def beam_from_encoder(model: Transducer, enc: jax.Array, enc_lengths: jax.Array, *,
                      beam_size: int = 4,
                      max_len: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Modified beam search on encoder output [B, T, J] -> (tokens [B, L], lengths, scores [B])."""
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size} must be >= 1")
    b, t, _ = enc.shape
    k_ = beam_size
    max_len = max_len if max_len is not None else t
    if max_len < 1:
        raise ValueError(f"max_len={max_len} must be >= 1")
    n = b * k_
    pred, state = model.predictor_step(jnp.zeros((n,), jnp.int32), model.predictor_init(n))
    flat = lambda x: x.reshape((n,) + x.shape[2:])
    unflat = lambda x: x.reshape((b, k_) + x.shape[1:])
    pred = unflat(pred)
    state = jax.tree.map(unflat, state)
    scores = jnp.full((b, k_), _NEG, jnp.float32).at[:, 0].set(0.0)  # one live hypothesis
    tokens = jnp.zeros((b, k_, max_len), jnp.int32)
    lengths = jnp.zeros((b, k_), jnp.int32)
    positions = jnp.arange(max_len)
    rows = jnp.arange(b)[:, None]

    def frame(carry, xs):
        enc_t, valid_t = xs
        pred, state, tokens, lengths, scores = carry
        logp = jax.nn.log_softmax(model.joint(enc_t[:, None, :], pred).astype(jnp.float32), -1)
        v = logp.shape[-1]
        cand = scores[:, :, None] + logp  # [B, K, V]
        cand = cand.at[:, :, 1:].set(jnp.where((lengths < max_len)[:, :, None],
                                               cand[:, :, 1:], _NEG))
        # Merge: candidate (b, extend by last token of a) spells hypothesis a (a = b + [v]).
        prefix_len = lengths[:, None, :]  # [B, 1(a), K(b)] -> compare a's first len(b) tokens
        same_prefix = jnp.all((tokens[:, :, None, :] == tokens[:, None, :, :])
                              | (positions[None, None, None, :] >= prefix_len[..., None]), -1)
        alive = scores > _NEG / 2  # dead placeholder hypotheses never merge
        dup = (same_prefix & (lengths[:, :, None] == lengths[:, None, :] + 1)
               & alive[:, :, None] & alive[:, None, :])  # [B, K(a), K(b)]
        last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[..., None], -1)[..., 0]
        ext = jnp.take_along_axis(cand[:, None, :, :],  # cand[b, last[a]] -> [B, K(a), K(b)]
                                  jnp.broadcast_to(last[:, :, None, None], (b, k_, k_, 1)),
                                  -1)[..., 0]
        merged = jax.nn.logsumexp(jnp.where(dup, ext, _NEG), axis=-1)  # [B, K(a)]
        blank = jnp.logaddexp(cand[:, :, 0], merged)
        # Remove the merged extension candidates: (b, last[a]) for every dup pair.
        hit = jnp.any(dup[..., None] & (jax.nn.one_hot(last, v, dtype=bool)[:, :, None, :]), 1)
        cand = jnp.where(hit, _NEG, cand).at[:, :, 0].set(blank)
        new_scores, idx = jax.lax.top_k(cand.reshape(b, k_ * v), k_)
        parent, token = idx // v, (idx % v).astype(jnp.int32)
        take = lambda x: x[rows, parent]
        p_pred, p_state = take(pred), jax.tree.map(take, state)
        p_tokens, p_lengths = take(tokens), take(lengths)
        emit = token != 0
        step_pred, step_state = model.predictor_step(flat(token), jax.tree.map(flat, p_state))
        n_pred = _where_tree(emit, unflat(step_pred), p_pred)
        n_state = _where_tree(emit, jax.tree.map(unflat, step_state), p_state)
        n_tokens = jnp.where(emit[..., None] & (positions == p_lengths[..., None]),
                             token[..., None], p_tokens)
        n_lengths = p_lengths + emit.astype(jnp.int32)
        new = (n_pred, n_state, n_tokens, n_lengths, new_scores)
        return _where_tree(valid_t, new, carry), None

    valid = jnp.arange(t)[:, None] < enc_lengths[None, :]
    init = (pred, state, tokens, lengths, scores)
    (_, _, tokens, lengths, scores), _ = jax.lax.scan(frame, init,
                                                      (jnp.swapaxes(enc, 0, 1), valid))
    best = jnp.argmax(scores, axis=-1)
    pick = lambda x: jnp.take_along_axis(x, best.reshape((b, 1) + (1,) * (x.ndim - 2)),
                                         1)[:, 0]
    return pick(tokens), pick(lengths), pick(scores)


def beam_search(model: Transducer, audio: jax.Array, audio_lengths: jax.Array, *,
                beam_size: int = 4,
                max_len: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batched modified beam search (module docstring) of audio [B, N] ->
    (best tokens [B, L] padded 0, lengths [B], log-score [B]); L = max_len, default T."""
    _check_inputs(audio, audio_lengths)
    enc, enc_lengths = model.encode(audio, audio_lengths)
    return beam_from_encoder(model, enc, enc_lengths, beam_size=beam_size, max_len=max_len)


def decode_with_slu(model: Transducer, batch: Mapping[str, jax.Array] | jax.Array,
                    audio_lengths: jax.Array | None = None, *, method: str = "greedy",
                    max_symbols_per_frame: int = 3, beam_size: int = 4,
                    max_len: int | None = None,
                    cohort: jax.Array | None = None,
                    context: jax.Array | None = None) -> dict[str, jax.Array]:
    """Decode a batch and run the SLU heads on the hypotheses, for evaluation.

    `batch` is a batch dict (audio, audio_lengths) or the audio array [B, N] itself with
    `audio_lengths` [B]. method "greedy" (uses max_symbols_per_frame) or "beam" (uses beam_size);
    both options are accepted for either method so an evaluation config can pass them all.
    Returns tokens [B, L] (0-padded), lengths [B], scores [B] (beam only), and when the model has
    the heads: intent [B] (argmax), intent_prob [B] (its softmax probability), intent_logits, and
    slot_tags [B, L] (argmax per hypothesis token, -1 past the hypothesis length). The encoder runs
    once and feeds decoding and both heads. `cohort` [B] (or the batch's "cohort"): the rows'
    cohorts, for a model that reads them (model.num_cohorts > 0). `context` [B, C] (or the
    batch's "context"): the requests' context vectors, for a model with a context input.
    """
    if method not in ("greedy", "beam"):
        raise ValueError(f"decode method {method!r}: use 'greedy' or 'beam'")
    if isinstance(batch, Mapping):
        if audio_lengths is not None:
            raise ValueError("pass audio_lengths inside the batch dict or with a bare audio "
                             "array, not both")
        audio, audio_lengths = batch["audio"], batch["audio_lengths"]
        cohort = batch.get("cohort", cohort)
        context = batch.get("context", context)
    else:
        if audio_lengths is None:
            raise ValueError("decode_with_slu(model, audio, audio_lengths): audio_lengths is "
                             "required when audio is passed as an array")
        audio = batch
    _check_inputs(audio, audio_lengths)
    extra = {} if cohort is None else {"cohort": cohort}
    enc, enc_lengths = model.encode(audio, audio_lengths, **extra)
    out: dict[str, jax.Array] = {}
    if method == "greedy":
        out["tokens"], out["lengths"] = greedy_from_encoder(
            model, enc, enc_lengths, max_symbols_per_frame=max_symbols_per_frame, max_len=max_len)
    else:
        out["tokens"], out["lengths"], out["scores"] = beam_from_encoder(
            model, enc, enc_lengths, beam_size=beam_size, max_len=max_len)
    if getattr(model, "intent", None) is not None:
        logits = model.intent_from_encoder(enc, enc_lengths, context)
        out["intent_logits"] = logits
        out["intent"] = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        out["intent_prob"] = jnp.max(jax.nn.softmax(logits.astype(jnp.float32), -1), -1)
    if getattr(model, "slots", None) is not None:
        logits = model.slots_from_tokens(out["tokens"], out["lengths"], enc, enc_lengths)
        valid = jnp.arange(out["tokens"].shape[1])[None, :] < out["lengths"][:, None]
        out["slot_tags"] = jnp.where(valid, jnp.argmax(logits, -1), -1).astype(jnp.int32)
    return out


def jit_decode_with_slu(graphdef: nnx.GraphDef, *, method: str = "greedy",
                        **options: Any) -> Callable[[nnx.State, Mapping[str, jax.Array]], dict]:
    """`jax.jit`-compiled `decode_with_slu(nnx.merge(graphdef, params), batch)` as
    fn(params, batch): compiled once per batch shape, reusable as the parameters change."""

    def fn(params: nnx.State, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return decode_with_slu(nnx.merge(graphdef, params), batch, method=method, **options)

    return jax.jit(fn)
