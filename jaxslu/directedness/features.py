"""Acoustic and semantic features of each utterance of the directedness corpus, from a trained
E2E SLU transducer run (and optionally a text NLU run), for the directedness classifiers.

Acoustic (what the audio sounds like, not what it says): the mean and the standard deviation,
over the valid frames, of the transducer's encoder output (`Transducer.encode`, J dims each),
and the log duration in seconds.

Semantic (what the recognizer heard and how sure it is): the greedy hypothesis (the run's
decoder settings), as hashed bag-of-words counts (`HASH_DIMS` buckets of the words, log(1 + n))
plus its length log(1 + words); the hypothesis's confidence, the log-likelihood of the
hypothesis under the transducer (`fused_rnnt_loss` on the hypothesis, all alignments) per
token; the E2E intent head's largest probability and its entropy; and, with a text NLU run, that
run's largest intent probability and entropy on the hypothesis text.

`extract_features(e2e_workdir, manifest, out_dir, nlu_workdir=None)` writes
out_dir/<split>.npz (acoustic [N, Da], semantic [N, Ds], label [N], ids, texts, hypotheses)
for the splits "train" and "test" of the manifest, plus out_dir/features.json (the feature
names, the runs and steps, and the training split's mean and standard deviation, which the
classifiers standardize with; a column that is constant in training keeps scale 1).
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

HASH_DIMS = 256
SPLITS = ("train", "test")


def _bucket(word: str) -> int:
    return int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little") % HASH_DIMS


def hashed_bow(text: str) -> np.ndarray:
    v = np.zeros((HASH_DIMS,), np.float32)
    for w in text.split():
        v[_bucket(w)] += 1.0
    return np.log1p(v)


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0)
    return -np.sum(p * np.log(p), axis=-1)


def _acoustic_and_decode(model, batch, *, max_symbols_per_frame: int):
    """Inside jit: pooled encoder statistics, greedy hypothesis, its log-likelihood per token,
    the E2E intent distribution."""
    from jaxslu.decoding.transducer import greedy_from_encoder
    from jaxslu.layers.core import length_mask
    from jaxslu.losses.rnnt import fused_rnnt_loss

    enc, lengths = model.encode(batch["audio"], batch["audio_lengths"])
    mask = length_mask(lengths, enc.shape[1])[..., None].astype(jnp.float32)
    n = jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    e32 = enc.astype(jnp.float32)
    mean = jnp.sum(e32 * mask, axis=1) / n
    var = jnp.sum(jnp.square(e32 - mean[:, None]) * mask, axis=1) / n
    tokens, tok_len = greedy_from_encoder(model, enc, lengths,
                                          max_symbols_per_frame=max_symbols_per_frame)
    pred = model.predict(tokens, tok_len)
    nll = fused_rnnt_loss(enc, pred, model.joint_output.kernel[...], model.joint_output.bias[...],
                          tokens, lengths.astype(jnp.int32), tok_len.astype(jnp.int32),
                          reduction="none", activation=model.cfg.joint_activation)
    out = {"mean": mean, "std": jnp.sqrt(var + 1e-8), "tokens": tokens, "lengths": tok_len,
           "loglik_per_token": -nll / (tok_len + 1).astype(jnp.float32)}
    if getattr(model, "intent", None) is not None:
        out["intent_probs"] = jax.nn.softmax(
            model.intent_from_encoder(enc, lengths).astype(jnp.float32), -1)
    return out


@functools.lru_cache(maxsize=None)
def _feature_fn(max_symbols_per_frame: int):
    """One function object per setting, so LoadedRun.compiled compiles each shape once for all
    splits."""
    return functools.partial(_acoustic_and_decode, max_symbols_per_frame=max_symbols_per_frame)


def split_features(run, source, nlu_predictor=None) -> dict[str, Any]:
    """Features of every example of `source` (an audio source of the directedness manifest)."""
    fn = _feature_fn(run.cfg.eval.max_symbols_per_frame)
    tok = run.assets.tokenizer
    sr = run.cfg.frontend.sample_rate
    rows: dict[int, dict[str, Any]] = {}
    for batch in run.eval_batches(source):
        out, index, weight = run.apply(fn, batch)
        for b, (idx, w) in enumerate(zip(index, weight)):
            if idx < 0 or w == 0:
                continue
            ids = [int(i) for i in out["tokens"][b, : int(out["lengths"][b])]]
            row = {"mean": out["mean"][b], "std": out["std"][b],
                   "duration": float(batch["audio_lengths"][b]) / sr,
                   "hyp": tok.decode(ids), "loglik": float(out["loglik_per_token"][b])}
            if "intent_probs" in out:
                p = np.asarray(out["intent_probs"][b])
                row["e2e_prob"], row["e2e_entropy"] = float(p.max()), float(_entropy(p))
            rows[int(idx)] = row
    order = sorted(rows)
    if len(order) != len(source):
        raise ValueError(f"directedness features: {len(source) - len(order)} of {len(source)} "
                         f"examples of {source!r} were not featurized (skipped by the pipeline?)")
    hyps = [rows[i]["hyp"] for i in order]
    nlu = None
    if nlu_predictor is not None:
        preds = nlu_predictor.predict_probs(hyps)
        nlu = np.stack([preds.max(-1), _entropy(preds)], axis=-1)
    acoustic = np.stack([np.concatenate([rows[i]["mean"], rows[i]["std"],
                                         [np.log(max(rows[i]["duration"], 1e-3))]])
                         for i in order]).astype(np.float32)
    scalars = [[np.log1p(len(rows[i]["hyp"].split())), rows[i]["loglik"],
                rows[i].get("e2e_prob", 0.0), rows[i].get("e2e_entropy", 0.0)] for i in order]
    semantic = np.concatenate([np.stack([hashed_bow(h) for h in hyps]),
                               np.asarray(scalars, np.float32)] +
                              ([nlu.astype(np.float32)] if nlu is not None else []), axis=-1)
    metas = [source.metadata(i) for i in order]
    labels = np.asarray([int(m["meta"]["directed"]) for m in metas], np.int32)
    return {"acoustic": acoustic, "semantic": semantic.astype(np.float32), "label": labels,
            "ids": np.asarray([m["id"] for m in metas]), "texts": np.asarray([m["text"] for m in metas]),
            "hypotheses": np.asarray(hyps),
            "delivery": np.asarray([m["meta"].get("delivery", "") for m in metas])}


class NluProbs:
    """Intent distributions of a text NLU run for a list of texts (batched)."""

    def __init__(self, workdir: str | Path):
        from jaxslu.eval.run import LoadedRun

        self.run = LoadedRun.from_workdir(workdir, devices=jax.devices()[:1])
        if self.run.cfg.task != "nlu":
            raise ValueError(f"{workdir} holds a {self.run.cfg.task!r} run, not an nlu one")

    def predict_probs(self, texts: Sequence[str]) -> np.ndarray:
        task, assets = self.run.task, self.run.assets
        bs = self.run.cfg.data.eval_batch_size
        out = []
        for start in range(0, len(texts), bs):
            chunk = texts[start:start + bs]
            rows = []
            for k, t in enumerate(chunk):
                ids, _, tags = task.encode(assets, t or "<empty>")
                rows.append({"tokens": np.asarray(ids or [0], np.int32),
                             "slot_tags": np.asarray(tags or [-1], np.int32), "intent": -1,
                             "domain": -1, "index": start + k})
            batch = task.collate(rows, bs)
            probs, _, _ = self.run.apply(_intent_probs, batch)
            out.append(np.asarray(probs)[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, len(assets.vocab.intents)))


def _intent_probs(model, batch):
    return jax.nn.softmax(model(batch, train=False)["intent_logits"].astype(jnp.float32), -1)


def feature_names(j: int, with_nlu: bool) -> dict[str, list[str]]:
    return {"acoustic": [f"enc_mean_{k}" for k in range(j)] + [f"enc_std_{k}" for k in range(j)]
            + ["log_duration"],
            "semantic": [f"bow_{k}" for k in range(HASH_DIMS)] +
                        ["log_words", "loglik_per_token", "e2e_intent_prob", "e2e_intent_entropy"]
                        + (["nlu_intent_prob", "nlu_intent_entropy"] if with_nlu else [])}


def extract_features(e2e_workdir: str | Path, manifest: str | Path, out_dir: str | Path,
                     nlu_workdir: str | Path | None = None) -> Path:
    """Write the features of the manifest's train and test splits (module docstring)."""
    from jaxslu.data.sources import manifest as manifest_source
    from jaxslu.eval.run import LoadedRun

    run = LoadedRun.from_workdir(e2e_workdir, devices=jax.devices()[:1])
    if run.cfg.task != "transducer_slu":
        raise ValueError(f"{e2e_workdir} holds a {run.cfg.task!r} run; the directedness "
                         "features need an E2E SLU transducer run (task transducer_slu)")
    nlu = NluProbs(nlu_workdir) if nlu_workdir else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    feats = {}
    for split in SPLITS:
        source = manifest_source(split, path=str(manifest))
        feats[split] = split_features(run, source, nlu)
        tmp = out / f".{split}.tmp.npz"
        np.savez(tmp, **feats[split])
        tmp.replace(out / f"{split}.npz")
    # A (near-)constant training column (a hashed word never heard in training) keeps scale 1:
    # dividing by its tiny spread would blow up any test value in it.
    stats = {}
    for k in ("acoustic", "semantic"):
        sd = feats["train"][k].std(0)
        stats[k] = {"mean": feats["train"][k].mean(0).tolist(),
                    "std": np.where(sd < 1e-3, 1.0, sd).tolist()}
    info = {"e2e_workdir": str(e2e_workdir), "e2e_step": run.step,
            "nlu_workdir": str(nlu_workdir) if nlu_workdir else None,
            "nlu_step": nlu.run.step if nlu else None, "manifest": str(manifest),
            "names": feature_names((feats["train"]["acoustic"].shape[1] - 1) // 2, nlu is not None),
            "num_examples": {s: int(len(feats[s]["label"])) for s in SPLITS},
            "standardize": stats}
    (out / "features.json").write_text(json.dumps(info) + "\n")
    return out
