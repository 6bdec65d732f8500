"""Decoding and metrics of multi-party streaming ASR.

Decoding: greedy transducer search over every output channel (channels folded into the batch),
recording the encoder frame at which each token is emitted (`greedy_timed`); offline from the
whole mixture's encoder output, or streaming chunk by chunk (`stream_decode`: the encoder's
`encode_chunk` with carried state and the search continued from its state), which gives the
offline result (tested). A token emitted at frame k is available at (k + 1) * frame_seconds.

Metrics (per split, `MultipartyEvaluator`):
Rates (wer, orc_wer, turn_count_accuracy) are fractions, latencies milliseconds.
  * `wer`: concatenated minimum-permutation WER (cpWER-style) over channels: the reference of a
    channel is the words of the turns assigned to it (first-free, as in training), the
    hypothesis its emitted words; errors summed over channels under the best channel
    permutation, over all reference words. With one channel (the baseline) the reference is
    every turn in start order.
  * `orc_wer`: optimal reference combination WER (every assignment of reference turns to
    output channels, keeping each channel's turns in start order; exhaustive up to 2^12
    assignments, otherwise the first-free one).
  * `turn_count_accuracy`: share of meetings whose number of emitted turns (<sot> tokens, or a
    word outside any open turn) equals the reference number of turns.
  * `sot_latency_ms` / `eot_latency_ms`: emission time of <sot> minus the turn's speech start,
    and of <eot> minus its speech end, over turns matched in order within each channel (best
    permutation); mean and p90 (`*_p90_ms`).
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslu.decoding.transducer import _where_tree
from jaxslu.multiparty.simulate import assign_channels
from jaxslu.multiparty.task import EOT, SOT
from jaxslu.registry import EVALUATORS
from jaxslu.text.metrics import edit_distance


def greedy_timed(model, enc, valid, pred, state, *, frame_offset, max_symbols_per_frame: int,
                 max_len: int):
    """Greedy search over enc [N, T, J] (valid [N, T]) from the prediction network's `pred`,
    `state`. Returns (tokens [N, max_len], frames [N, max_len] (absolute frame of each emission,
    frame_offset + t), lengths [N], pred, state)."""
    n = enc.shape[0]
    positions = jnp.arange(max_len)[None, :]

    def frame(carry, xs):
        enc_t, valid_t, t = xs

        def cond(c):
            return (c[0] < max_symbols_per_frame) & jnp.any(c[1])

        def body(c):
            i, active, pred, state, tokens, frames, lengths = c
            k = jnp.argmax(model.joint(enc_t, pred), axis=-1).astype(jnp.int32)
            emit = active & (k != 0) & (lengths < max_len)
            new_pred, new_state = model.predictor_step(k, state)
            pred = _where_tree(emit, new_pred, pred)
            state = _where_tree(emit, new_state, state)
            at = emit[:, None] & (positions == lengths[:, None])
            tokens = jnp.where(at, k[:, None], tokens)
            frames = jnp.where(at, t, frames)
            return i + 1, emit, pred, state, tokens, frames, lengths + emit.astype(jnp.int32)

        _, _, *rest = jax.lax.while_loop(cond, body, (jnp.int32(0), valid_t) + carry)
        return tuple(rest), None

    t_idx = frame_offset + jnp.arange(enc.shape[1], dtype=jnp.int32)
    init = (pred, state, jnp.zeros((n, max_len), jnp.int32), jnp.full((n, max_len), -1, jnp.int32),
            jnp.zeros((n,), jnp.int32))
    (pred, state, tokens, frames, lengths), _ = jax.lax.scan(
        frame, init, (jnp.swapaxes(enc, 0, 1), valid.T, t_idx))
    return tokens, frames, lengths, pred, state


def _start(model, n):
    return model.predictor_step(jnp.zeros((n,), jnp.int32), model.predictor_init(n))


def offline_decode(model, audio, audio_lengths, *, max_symbols_per_frame: int = 3,
                   max_len: int | None = None):
    """Audio [B, N] -> (tokens, frames [B, C, L], lengths [B, C])."""
    enc, lengths = model.encode(audio, audio_lengths)
    b, c, t, j = enc.shape
    max_len = max_len or t * max_symbols_per_frame
    valid = jnp.arange(t)[None, :] < jnp.repeat(lengths, c)[:, None]
    pred, state = _start(model, b * c)
    tokens, frames, lens, _, _ = greedy_timed(
        model, enc.reshape(b * c, t, j), valid, pred, state, frame_offset=jnp.int32(0),
        max_symbols_per_frame=max_symbols_per_frame, max_len=max_len)
    return (tokens.reshape(b, c, -1), frames.reshape(b, c, -1), lens.reshape(b, c))


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("max_symbols_per_frame", "max_len"))
def _stream_step(graphdef, params, chunk, num_valid, enc_state, pred, pstate, offset, *,
                 max_symbols_per_frame: int, max_len: int):
    """One chunk: encode it with the carried encoder state, continue the greedy search. Jitted
    once per model structure and chunk shape (every chunk of every mixture reuses it)."""
    m = nnx.merge(graphdef, params)
    enc, valid, enc_state = m.encode_chunk(chunk, num_valid, enc_state)
    b, c, steps, _ = enc.shape
    out = greedy_timed(m, enc.reshape(b * c, steps, -1), jnp.repeat(valid, c, axis=0), pred,
                       pstate, frame_offset=offset, max_symbols_per_frame=max_symbols_per_frame,
                       max_len=max_len)
    return out, enc_state


def stream_decode(model, audio: np.ndarray, audio_lengths: np.ndarray, *, chunk_frames: int = 16,
                  max_symbols_per_frame: int = 3, chunk_max_len: int | None = None):
    """Decode mixtures chunk by chunk (log-mel features of the whole mixture split into chunks of
    `chunk_frames` feature frames; the log-mel frontend is frame-local with normalize="none").
    Returns numpy (tokens, frames [B, C, L], lengths [B, C]) as `offline_decode`."""
    from jaxslu.audio.frontend import log_mel

    if model.frontend_cfg.normalize != "none":
        raise ValueError("streaming needs frontend.normalize='none' (utterance normalization "
                         "reads the whole utterance)")
    model.stream_chunk_check(chunk_frames)
    audio, audio_lengths = jnp.asarray(audio), jnp.asarray(audio_lengths)
    feats, flen = log_mel(audio, audio_lengths, model.frontend_cfg)
    b, f, m = feats.shape
    pad = (-f) % chunk_frames
    feats = jnp.pad(feats, ((0, 0), (0, pad), (0, 0)))
    c = model.channels
    s = model.cfg.encoder.subsampling
    steps = chunk_frames // s
    max_len = chunk_max_len or steps * max_symbols_per_frame
    enc_state = model.stream_init(b)
    pred, pstate = _start(model, b * c)
    out_t, out_f = [[[] for _ in range(c)] for _ in range(b)], [[[] for _ in range(c)]
                                                              for _ in range(b)]
    graphdef, params = nnx.split(model)
    for k in range(feats.shape[1] // chunk_frames):
        chunk = feats[:, k * chunk_frames:(k + 1) * chunk_frames]
        num_valid = jnp.clip(flen - k * chunk_frames, 0, chunk_frames)
        (tokens, frames, lens, pred, pstate), enc_state = _stream_step(
            graphdef, params, chunk, num_valid, enc_state, pred, pstate, jnp.int32(k * steps),
            max_symbols_per_frame=max_symbols_per_frame, max_len=max_len)
        tokens, frames, lens = (np.asarray(x) for x in (tokens, frames, lens))
        for r in range(b * c):
            out_t[r // c][r % c].extend(tokens[r, : lens[r]].tolist())
            out_f[r // c][r % c].extend(frames[r, : lens[r]].tolist())
    longest = max([1] + [len(x) for row in out_t for x in row])
    tok = np.zeros((b, c, longest), np.int32)
    fr = np.full((b, c, longest), -1, np.int32)
    ln = np.zeros((b, c), np.int32)
    for i in range(b):
        for ch in range(c):
            n = len(out_t[i][ch])
            tok[i, ch, :n], fr[i, ch, :n], ln[i, ch] = out_t[i][ch], out_f[i][ch], n
    return tok, fr, ln


# ---- metrics ---------------------------------------------------------------------------------


def parse_turns(tokens: Sequence[int], frames: Sequence[int], vocab) -> list[dict[str, Any]]:
    """One channel's emissions -> turns [{"words", "sot_frame", "eot_frame"}]: a turn opens at
    <sot> (or at a word when none is open, sot_frame None) and closes at <eot> (or at the
    channel's end, eot_frame None); an <eot> with no open turn is ignored."""
    turns, cur = [], None
    for tok, fr in zip(tokens, frames):
        tok = int(tok)
        if tok == SOT:
            if cur is not None:
                turns.append(cur)
            cur = {"words": [], "sot_frame": int(fr), "eot_frame": None}
        elif tok == EOT:
            if cur is not None:
                cur["eot_frame"] = int(fr)
                turns.append(cur)
                cur = None
        elif tok > EOT or tok == 1:
            if cur is None:
                cur = {"words": [], "sot_frame": None, "eot_frame": None}
            cur["words"].extend(vocab.decode([tok]))
    if cur is not None:
        turns.append(cur)
    return turns


def min_permutation_errors(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]
                           ) -> tuple[int, tuple[int, ...]]:
    """(errors, perm): min over permutations `perm` of sum_c edit(refs[perm[c]], hyps[c])."""
    c = len(hyps)
    best = None
    for perm in itertools.permutations(range(c)):
        e = sum(edit_distance(list(refs[perm[k]]), list(hyps[k]))[0] for k in range(c))
        if best is None or e < best[0]:
            best = (e, perm)
    return best


def orc_errors(ref_turns: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]],
               fallback: Sequence[int], limit: int = 4096) -> int:
    """Optimal reference combination: min over assignments of turns (in start order) to the
    channels of the summed edit distances (exhaustive up to `limit` assignments)."""
    c, k = len(hyps), len(ref_turns)
    candidates = (itertools.product(range(c), repeat=k) if c ** k <= limit else [tuple(fallback)])
    best = None
    for assign in candidates:
        refs = [[w for t, a in zip(ref_turns, assign) if a == ch for w in t] for ch in range(c)]
        e = sum(edit_distance(refs[ch], list(hyps[ch]))[0] for ch in range(c))
        best = e if best is None else min(best, e)
    return int(best)


def meeting_scores(turns: Sequence[dict[str, Any]], hyp_channels: Sequence[list[dict]],
                   frame_seconds: float) -> dict[str, Any]:
    """Errors, turn counts and latencies of one meeting (reference turns with start/end seconds
    and words; hypothesis turns per channel from `parse_turns`)."""
    c = len(hyp_channels)
    assign = assign_channels(turns, c)
    refs = [[w for t, a in zip(turns, assign) if a == ch for w in t["words"]] for ch in range(c)]
    hyps = [[w for t in ch for w in t["words"]] for ch in hyp_channels]
    errors, perm = min_permutation_errors(refs, hyps)
    orc = orc_errors([t["words"] for t in turns], hyps, assign)
    sot, eot = [], []
    for k in range(c):
        ref_turns = [t for t, a in zip(turns, assign) if a == perm[k]]
        for ref, hyp in zip(ref_turns, hyp_channels[k]):
            if hyp["sot_frame"] is not None:
                sot.append(((hyp["sot_frame"] + 1) * frame_seconds - ref["start"]) * 1000.0)
            if hyp["eot_frame"] is not None:
                eot.append(((hyp["eot_frame"] + 1) * frame_seconds - ref["end"]) * 1000.0)
    return {"errors": int(errors), "orc_errors": orc,
            "ref_words": sum(len(t["words"]) for t in turns), "ref_turns": len(turns),
            "hyp_turns": sum(len(ch) for ch in hyp_channels), "sot_ms": sot, "eot_ms": eot,
            "perm": list(perm)}


def summarize(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    words = max(1, sum(s["ref_words"] for s in scores))
    sot = np.asarray([x for s in scores for x in s["sot_ms"]], np.float64)
    eot = np.asarray([x for s in scores for x in s["eot_ms"]], np.float64)

    def stat(x, fn):
        return round(float(fn(x)), 1) if len(x) else None

    return {
        "num_examples": len(scores),
        "wer": round(sum(s["errors"] for s in scores) / words, 5),
        "orc_wer": round(sum(s["orc_errors"] for s in scores) / words, 5),
        "turn_count_accuracy": round(float(np.mean(
            [s["hyp_turns"] == s["ref_turns"] for s in scores])), 5) if scores else 0.0,
        "sot_latency_ms": stat(sot, np.mean), "sot_latency_p90_ms": stat(sot, lambda x:
                                                                          np.percentile(x, 90)),
        "eot_latency_ms": stat(eot, np.mean), "eot_latency_p90_ms": stat(eot, lambda x:
                                                                          np.percentile(x, 90)),
        "num_sot_matched": int(len(sot)), "num_eot_matched": int(len(eot)),
    }


def _decode(model, batch):
    return offline_decode(model, batch["audio"], batch["audio_lengths"])


@EVALUATORS.register("multiparty")
class MultipartyEvaluator:
    def __init__(self, run):
        self.run = run

    def evaluate(self, split: str) -> tuple[dict, list[dict]]:
        run = self.run
        source = run.task.open_source(split)
        fs = run.task.frame_seconds()
        scores, records = {}, {}
        for batch in run.eval_batches(source):
            (tokens, frames, lengths), index, weight = run.apply(_decode, batch)
            for b, (idx, w) in enumerate(zip(index, weight)):
                if idx < 0 or w <= 0:
                    continue
                ex = source[int(idx)]
                hyp = [parse_turns(tokens[b, ch, : lengths[b, ch]],
                                   frames[b, ch, : lengths[b, ch]], run.assets)
                       for ch in range(tokens.shape[1])]
                s = meeting_scores(ex["turns"], hyp, fs)
                scores[int(idx)] = s
                records[int(idx)] = {
                    "id": ex["id"], "num_speakers": ex["meta"]["num_speakers"],
                    "overlap_ratio": round(float(ex["overlap_ratio"]), 3),
                    "reference": [{"speaker": t["speaker"], "words": " ".join(t["words"]),
                                   "start": round(t["start"], 3), "end": round(t["end"], 3)}
                                  for t in ex["turns"]],
                    "hypothesis": [[{"words": " ".join(t["words"]),
                                     "sot_frame": t["sot_frame"], "eot_frame": t["eot_frame"]}
                                    for t in ch] for ch in hyp],
                    "errors": s["errors"], "ref_words": s["ref_words"]}
        order = sorted(scores)
        report = summarize([scores[i] for i in order])
        report["frame_seconds"] = fs
        report["channels"] = run.task.channels
        # Breakdown by overlap: meetings with and without overlapped speech.
        by = {"no_overlap": [], "overlap": []}
        for i in order:
            by["overlap" if records[i]["overlap_ratio"] > 0 else "no_overlap"].append(scores[i])
        report["by_overlap"] = {k: summarize(v) for k, v in by.items() if v}
        return report, [records[i] for i in order]
