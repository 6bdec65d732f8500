"""`jaxslu discover`: ADVIN's three stages on any text<TAB>label TSV (docs/discovery.md).

Protocol (TEXTOIR): a fraction of the training intents is known, a fraction of each known
intent's training rows is labeled, everything else is the unlabeled pool; the whole test split
is scored. Nothing about the number of intents is given to the method: K is found.

1. Calibration: a few of the known intents are set aside as *pseudo-novel* (`heldout_intents`)
   and the embedding is trained (core trainer, `intent_discovery` task: `intent_ce` on a cosine
   classifier + `pairwise_margin`) on the labeled rows of the others. With it, two thresholds are
   measured on labeled data only:
   * the open-classification threshold on the cosine similarity to the nearest known-intent
     centroid: the best balanced accuracy between held-out rows of trained intents (dev rows,
     or `heldout_examples` of the labeled rows) and the pseudo-novel intents' rows plus the
     proxy out-of-domain text (`ood`);
   * the clustering threshold: the cut of the average-linkage tree of the pseudo-novel intents'
     rows that best reproduces their intents (ARI), i.e. the distance that best separates
     intents the embedding was not trained on;
   * with a domain map (`domains`), the cut of the tree of the known intents' centroids that
     best reproduces their domains.
2. Final embedding (`refit`): trained the same way on every labeled row. Pool and test rows
   whose nearest known centroid is within the open threshold take that intent; the others are
   flagged, and the flagged rows of the pool and test are clustered with the clustering
   threshold. Clusters smaller than `min_cluster_frac` of the median known-intent size are
   dissolved into their nearest cluster or known intent. K found = known + new clusters.
3. Domains: the centroids of every intent (known and new) clustered with the domain threshold.

Baselines on the same test features: k-means and agglomerative (Ward) clustering given the true
K, on the learned embedding and on the frozen encoder's embedding.

Options (`eval.options` of the config, `--set eval.options.<name>=...`):
  heldout_intents (0.2), heldout_examples (0.25, without a dev file), min_cluster_frac (0.5),
  max_pool (8000), refine_steps (3), ood (a TSV or text file of
  out-of-domain utterances; default: CLINC150's out-of-scope training queries when bundled;
  "none" for none), domains (JSON {domain: [intents]}; default: domains.json beside the train
  file), refit (True), baselines (True).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxslu.config import ExperimentConfig, save_config, to_dict
from jaxslu.discovery import cluster as C
from jaxslu.discovery.data import (ProtocolSplit, Row, protocol_split, read_domains, read_texts,
                                   read_tsv, write_rows)

log = logging.getLogger("jaxslu")

DEFAULTS = {"heldout_intents": 0.2, "heldout_examples": 0.25, "ood": "", "domains": "",
            "min_cluster_frac": 0.5, "max_pool": 8000, "refit": True, "baselines": True,
            "refine_steps": 3}


def _options(cfg: ExperimentConfig) -> dict[str, Any]:
    opts = dict(DEFAULTS)
    unknown = set(cfg.eval.options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"eval.options {sorted(unknown)} unknown to jaxslu discover; it takes "
                         f"{sorted(DEFAULTS)}")
    opts.update(cfg.eval.options)
    return opts


def default_ood() -> Path | None:
    from jaxslu import paths

    try:
        f = paths.data_dir() / "clinc150" / "data_full.json"
    except FileNotFoundError:
        return None
    return f if f.exists() else None


def load_ood(spec: str) -> tuple[list[str], str]:
    if spec == "none":
        return [], "none"
    if spec:
        return read_texts(spec), spec
    f = default_ood()
    if f is None:
        return [], "none (no bundled CLINC150)"
    data = json.loads(f.read_text())
    return [" ".join(t.lower().split()) for t, _ in data.get("oos_train", [])], \
        "CLINC150 oos_train (out-of-scope queries)"


@dataclasses.dataclass
class Embedder:
    """Embeds rows {text, feature_row} with a trained workdir."""

    workdir: Path

    def __call__(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        from jaxslu.discovery.data import IntentGroups
        from jaxslu.eval.run import LoadedRun

        if not rows:
            return np.zeros((0, 1), np.float32)
        run = self.__dict__.get("_run")
        if run is None:
            run = self.__dict__["_run"] = LoadedRun.from_workdir(self.workdir)
        source = IntentGroups([{"text": r["text"], "label": "", "feature_row": r["feature_row"]}
                               for r in rows], group_size=1, split="embed")
        out = None
        for batch in run.eval_batches(source):
            emb, index, weight = run.apply(_embedding, batch)
            if out is None:
                out = np.zeros((len(rows), emb.shape[-1]), np.float32)
            keep = weight > 0
            out[index[keep]] = emb[keep]
        return out


def _embedding(model, batch):
    return model(batch, train=False)["embedding"]


def _train(cfg: ExperimentConfig, workdir: Path, rows: list[dict[str, Any]],
           features: str) -> float:
    from jaxslu.train.loop import train

    write_rows(workdir / "rows" / "train.jsonl", rows)
    opts = dict(cfg.task_options)
    if features:
        opts["features"] = features
    data = dataclasses.replace(cfg.data, dataset="intent_groups", train_split="train",
                               options={**dict(cfg.data.options),
                                        "path": str(workdir / "rows")})
    run_cfg = dataclasses.replace(cfg, task="intent_discovery", task_options=opts, data=data)
    t0 = time.perf_counter()
    train(run_cfg, workdir / "run", progress=False)
    return time.perf_counter() - t0


def centroids(emb: np.ndarray, labels: Sequence[str], order: Sequence[str]) -> np.ndarray:
    labels = np.asarray(labels)
    return C.normalize(np.stack([emb[labels == x].mean(0) for x in order]))


def run_discovery(cfg: ExperimentConfig, *, train_path: str | Path, test_path: str | Path,
                  dev_path: str | Path | None, known_ratio: float, labeled_ratio: float,
                  seed: int, out: str | Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, seed=seed)
    opts = _options(cfg)
    _check_protocol(out, {"train": str(Path(train_path).resolve()),
                          "test": str(Path(test_path).resolve()),
                          "dev": str(Path(dev_path).resolve()) if dev_path else "",
                          "known_ratio": known_ratio, "labeled_ratio": labeled_ratio,
                          "seed": seed, "config": to_dict(cfg)})
    timings: dict[str, float] = {}
    train_rows = read_tsv(train_path, what="training")
    test_rows = read_tsv(test_path, what="test")
    dev_rows = read_tsv(dev_path, what="dev") if dev_path else []
    split = protocol_split(train_rows, known_ratio, labeled_ratio, seed)
    known = split.known
    known_set = set(known)
    ood_texts, ood_name = load_ood(str(opts["ood"]))
    domains_file = Path(opts["domains"]) if opts["domains"] else Path(train_path).parent / "domains.json"
    intent_domain = read_domains(domains_file) if domains_file.is_file() else None

    # -- calibration split: pseudo-novel intents and held-out rows of the trained ones ----------
    rng = np.random.default_rng(seed + 1)
    n_hold = int(round(len(known) * float(opts["heldout_intents"])))
    n_hold = min(max(n_hold, 2), len(known) - 2)
    if len(known) < 2:
        raise ValueError(f"{len(known)} known intent(s): discovery needs at least 2 (raise "
                         "--known-ratio)")
    if n_hold < 2:
        # Too few known intents to set some aside (e.g. 2 of SNIPS's 7 at 25%): both thresholds
        # are measured on held-out rows of the trained intents themselves, and the calibration
        # run is the final one.
        n_hold = 0
    pseudo = sorted(rng.choice(known, n_hold, replace=False).tolist()) if n_hold else []
    pseudo_set = set(pseudo)
    fit = [x for x in known if x not in pseudo_set]
    labeled = [train_rows[i] for i in split.labeled]

    # Every text the run embeds gets a row in one feature store.
    texts: list[str] = []
    index_of: dict[str, int] = {}

    def row(r: Row | str, label: str = "") -> dict[str, Any]:
        text = r.text if isinstance(r, Row) else r
        if text not in index_of:
            index_of[text] = len(texts)
            texts.append(text)
        return {"text": text, "label": label if label else (r.label if isinstance(r, Row) else ""),
                "feature_row": index_of[text]}

    # The store holds every text of the files in file order, so one cache serves every seed
    # and known ratio of a dataset.
    for r in (*train_rows, *test_rows, *dev_rows, *ood_texts):
        row(r)
    lab_rows = [row(r) for r in labeled]
    if dev_rows:
        cal_train = [r for r in lab_rows if r["label"] in set(fit)]
        cal_accept = [row(r) for r in dev_rows if r.label in set(fit)]
        pseudo_rows = [r for r in lab_rows if r["label"] in pseudo_set] + [
            row(r) for r in dev_rows if r.label in pseudo_set]
    else:
        cal_train, cal_accept = [], []
        by: dict[str, list[dict]] = {}
        for r in lab_rows:
            if r["label"] in set(fit):
                by.setdefault(r["label"], []).append(r)
        for lab in sorted(by):
            rs = by[lab]
            k = min(len(rs) - 2, int(round(len(rs) * float(opts["heldout_examples"]))))
            perm = rng.permutation(len(rs))
            cal_accept += [rs[i] for i in perm[:max(k, 0)]]
            cal_train += [rs[i] for i in perm[max(k, 0):]]
        pseudo_rows = [r for r in lab_rows if r["label"] in pseudo_set]
    ood_rows = [row(t) for t in ood_texts]
    pool_idx = list(split.unlabeled)
    if len(pool_idx) > int(opts["max_pool"]):
        pool_idx = sorted(rng.choice(pool_idx, int(opts["max_pool"]), replace=False).tolist())
    pool_rows = [row(train_rows[i]) for i in pool_idx]
    test_in = [row(r) for r in test_rows]

    # -- features -----------------------------------------------------------------------------
    features = ""
    kind = cfg.model.encoder.kind
    t0 = time.perf_counter()
    if kind == "bert_top":
        from jaxslu import paths
        from jaxslu.discovery.features import FeatureStore
        from jaxslu.nlu.task import resolve_pretrained

        ckpt = resolve_pretrained(cfg.task_options.get("pretrained", ""))
        from jaxslu.nlu.bert import BertConfig
        total = BertConfig.from_hf_json(ckpt / "config.json").num_layers
        store = FeatureStore.build(texts, ckpt, total - cfg.model.trainable_layers,
                                   int(cfg.task_options.get("max_tokens", 48)),
                                   paths.cache_dir(cfg.data.cache_dir) / "discovery")
        features = str(store.directory)
    timings["features_s"] = round(time.perf_counter() - t0, 1)

    # -- stage 1+2 calibration ------------------------------------------------------------------
    save_config(cfg, out / "config.json")
    timings["calibration_train_s"] = round(_train(cfg, out / "calibration", cal_train, features), 1)
    emb_cal = Embedder(out / "calibration" / "run")
    t0 = time.perf_counter()
    e_train = emb_cal(cal_train)
    fit_cent = centroids(e_train, [r["label"] for r in cal_train], fit)
    e_acc, e_pseudo, e_ood = emb_cal(cal_accept), emb_cal(pseudo_rows), emb_cal(ood_rows)
    s_acc = (e_acc @ fit_cent.T).max(1) if len(e_acc) else np.zeros(0)
    s_rej = np.concatenate([(e @ fit_cent.T).max(1) for e in (e_pseudo, e_ood) if len(e)]
                           or [np.zeros(0)])
    if not len(s_acc):  # too few labeled rows to hold some out: the training rows themselves
        s_acc = (e_train @ fit_cent.T).max(1)
    if not len(s_rej):
        raise ValueError("nothing to calibrate the open threshold against: with fewer than 4 "
                         "known intents an out-of-domain text file is needed "
                         "(--set eval.options.ood=FILE)")
    tau_open, bal = C.open_threshold(s_acc, s_rej)
    if pseudo:
        tau_cluster, curve = C.calibrate_threshold(e_pseudo, [r["label"] for r in pseudo_rows])
    else:
        tau_cluster, curve = C.calibrate_threshold(e_acc, [r["label"] for r in cal_accept])
    tau_domain = None
    timings["calibration_s"] = round(time.perf_counter() - t0, 1)
    calibration = {"pseudo_novel_intents": pseudo, "trained_intents": len(fit),
                   "open_threshold": round(tau_open, 4),
                   "open_balanced_accuracy": round(100 * bal, 2),
                   "cluster_threshold": round(tau_cluster, 4),
                   "cluster_ari_pseudo_novel": round(100 * max(c[1] for c in curve), 2),
                   "domain_threshold": None if tau_domain is None else round(tau_domain, 4),
                   "accept_rows": len(s_acc), "reject_rows": len(s_rej), "ood": ood_name}
    log.info("calibration: %s", calibration)

    # -- final embedding and stages 1-3 ---------------------------------------------------------
    if opts["refit"] and pseudo:
        timings["final_train_s"] = round(_train(cfg, out / "final", lab_rows, features), 1)
        emb = Embedder(out / "final" / "run")
    else:
        emb = emb_cal
    t0 = time.perf_counter()
    e_lab = emb(lab_rows)
    known_cent = centroids(e_lab, [r["label"] for r in lab_rows], known)
    e_pool, e_test = emb(pool_rows), emb(test_in)

    def classify(e):
        sims = e @ known_cent.T
        return sims.argmax(1), sims.max(1) >= tau_open

    pool_int, pool_known = classify(e_pool)
    test_int, test_known = classify(e_test)
    flag_e = np.concatenate([e_pool[~pool_known], e_test[~test_known]])
    n_pool_flag = int((~pool_known).sum())
    raw = C.cut(C.linkage(flag_e), tau_cluster, len(flag_e)) if len(flag_e) else np.zeros(0, int)
    sizes_known = np.bincount(np.concatenate([pool_int[pool_known], test_int[test_known]]),
                              minlength=len(known))
    min_size = max(2, int(np.ceil(float(opts["min_cluster_frac"]) * np.median(sizes_known))))
    if len(flag_e):
        ids, new_cent = C.merge_small(raw, flag_e, min_size, anchors=known_cent)
    else:
        ids, new_cent = np.zeros(0, int), np.zeros((0, known_cent.shape[1]))
    # A new cluster whose centroid is within the open threshold of a known intent is that
    # intent (rows of a known intent flagged one by one, e.g. its less typical phrasings).
    if len(new_cent):
        sims = new_cent @ known_cent.T
        to_known = sims.max(1) >= tau_open
        if to_known.any():
            keep = np.where(~to_known)[0]
            remap = np.full(len(new_cent), 0, np.int64)
            remap[keep] = np.arange(len(keep))
            nearest = sims.argmax(1)
            ids = np.array([(-1 - int(nearest[c])) if c >= 0 and to_known[c] else
                            (int(remap[c]) if c >= 0 else int(c)) for c in ids], np.int64)
            new_cent = new_cent[keep]
    n_new = len(new_cent)
    # cluster id per test row: known intent k -> k; new cluster j -> len(known) + j
    test_cluster = test_int.copy()
    flagged_test = np.where(~test_known)[0]
    t_ids = ids[n_pool_flag:]
    for pos, c in zip(flagged_test, t_ids):
        test_cluster[pos] = (len(known) + c) if c >= 0 else (-1 - c)
    pool_cluster = pool_int.copy()
    for pos, c in zip(np.where(~pool_known)[0], ids[:n_pool_flag]):
        pool_cluster[pos] = (len(known) + c) if c >= 0 else (-1 - c)
    refine_steps = int(opts["refine_steps"])
    if refine_steps and n_new:
        test_cluster, new_cent = refine(np.concatenate([e_pool, e_test]),
                                        np.concatenate([pool_cluster, test_cluster]),
                                        e_lab, [known.index(r["label"]) for r in lab_rows],
                                        len(known), len(known) + n_new, refine_steps)
        test_cluster = test_cluster[len(e_pool):]
        n_new = len(new_cent)
    is_known_pred = test_cluster < len(known)

    # stage 3: domains over every intent's centroid; the cut is measured on the known intents'
    # centroids in this same embedding (their domains are known)
    all_cent = np.concatenate([known_cent, new_cent]) if n_new else known_cent
    domain_of_cluster = None
    if intent_domain is not None:
        with_domain = [k for k, x in enumerate(known) if x in intent_domain]
        if len({intent_domain[known[k]] for k in with_domain}) >= 2:
            tau_domain, _ = C.calibrate_threshold(
                known_cent[with_domain], [intent_domain[known[k]] for k in with_domain])
            calibration["domain_threshold"] = round(tau_domain, 4)
            domain_of_cluster = C.cut(C.linkage(all_cent), tau_domain, len(all_cent))
    timings["discovery_s"] = round(time.perf_counter() - t0, 1)

    # -- report ---------------------------------------------------------------------------------
    y_true = [r.label for r in test_rows]
    report: dict[str, Any] = {
        "train": str(train_path), "test": str(test_path), "dev": str(dev_path or ""),
        "known_ratio": known_ratio, "labeled_ratio": labeled_ratio, "seed": seed,
        "encoder": describe_encoder(cfg), "k_true": len(split.labels), "k_known": len(known),
        "k_found": len(known) + n_new, "new_clusters": n_new, "min_cluster_size": min_size,
        "labeled_rows": len(lab_rows), "pool_rows": len(pool_rows),
        "pool_flagged": n_pool_flag, "test_rows": len(test_rows)}
    report.update(C.cluster_metrics(y_true, test_cluster.tolist()))
    novel_mask = np.array([y not in known_set for y in y_true])
    report["novel"] = C.cluster_metrics([y for y, m in zip(y_true, novel_mask) if m],
                                        test_cluster[novel_mask].tolist())
    report["open"] = C.open_metrics(
        [y if y in known_set else C.OPEN for y in y_true],
        [known[c] if c < len(known) else C.OPEN for c in test_cluster])
    report["calibration"] = calibration
    if domain_of_cluster is not None:
        truth = [intent_domain.get(y, "?") for y in y_true]
        test_dom = domain_of_cluster[test_cluster]
        report["domains"] = {"k_true": len(set(intent_domain.get(x, "?") for x in split.labels)),
                             "k_found": int(domain_of_cluster.max() + 1),
                             **C.cluster_metrics(truth, test_dom.tolist())}
    else:
        test_dom = None
        report["domains"] = None
    if opts["baselines"]:
        t0 = time.perf_counter()
        report["baselines"] = baselines(e_test, y_true, cfg, test_in, features)
        timings["baselines_s"] = round(time.perf_counter() - t0, 1)
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    report["timings"] = timings
    with open(out / "predictions.jsonl.tmp", "w", encoding="utf-8") as fh:
        for k, r in enumerate(test_rows):
            c = int(test_cluster[k])
            fh.write(json.dumps({"text": r.text, "cluster": c, "known": bool(is_known_pred[k]),
                                 "intent": known[c] if c < len(known) else None,
                                 "domain_cluster": None if test_dom is None else int(test_dom[k])
                                 }) + "\n")
    (out / "predictions.jsonl.tmp").replace(out / "predictions.jsonl")
    return report


def refine(x: np.ndarray, assign: np.ndarray, e_lab: np.ndarray, lab_ids: Sequence[int],
           n_known: int, n_total: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """A few Lloyd steps over every clustered row with the discovered K: each row moves to its
    nearest centroid (cosine), known centroids are the mean of their labeled rows and the rows
    they hold, new ones the mean of theirs; new clusters left empty are dropped. Corrects the
    one-shot open decisions near the threshold in both directions. Returns (cluster per row,
    new-cluster centroids)."""
    x = C.normalize(x)
    lab_sum = np.zeros((n_known, x.shape[1]))
    np.add.at(lab_sum, np.asarray(lab_ids), C.normalize(e_lab))
    assign = np.asarray(assign).copy()
    for _ in range(steps + 1):
        sums = np.zeros((n_total, x.shape[1]))
        np.add.at(sums, assign, x)
        sums[:n_known] += lab_sum
        counts = np.bincount(assign, minlength=n_total)
        alive = np.array([c for c in range(n_total) if c < n_known or counts[c] > 0])
        cents = C.normalize(sums[alive])
        new = alive[np.argmax(x @ cents.T, axis=1)]
        if np.array_equal(new, assign):
            break
        assign = new
    kept = sorted(set(assign[assign >= n_known].tolist()))
    remap = {c: n_known + j for j, c in enumerate(kept)}
    out = np.array([remap.get(int(c), int(c)) for c in assign], np.int64)
    sums = np.zeros((len(kept), x.shape[1]))
    for j, c in enumerate(kept):
        sums[j] = x[assign == c].sum(0)
    return out, (C.normalize(sums) if kept else np.zeros((0, x.shape[1])))


def _check_protocol(out: Path, protocol: dict[str, Any]) -> None:
    """`--out` resumes only the run it holds: the same files, ratios, seed and config."""
    f = out / "protocol.json"
    text = json.dumps(protocol, sort_keys=True, indent=1, default=str)
    if f.exists():
        if json.loads(f.read_text()) != json.loads(text):
            raise ValueError(f"--out {str(out)!r} holds a discovery run of other inputs, ratios, "
                             "seed or config; choose a new folder (or delete it to start over)")
        return
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(f)


def describe_encoder(cfg: ExperimentConfig) -> str:
    kind = cfg.model.encoder.kind
    if kind == "transformer":
        e = cfg.model.encoder
        return f"from scratch: {e.num_layers}-layer {e.dim}-d Transformer"
    name = cfg.task_options.get("pretrained", "")
    if kind == "bert":
        return f"{name} fine-tuned (all layers)"
    return f"{name}, top {cfg.model.trainable_layers} layers fine-tuned"


def baselines(e_test: np.ndarray, y_true: Sequence[str], cfg: ExperimentConfig,
              test_rows: Sequence[dict], features: str) -> dict[str, Any]:
    """k-means and agglomerative (Ward) with the true K on the learned test embedding and, for a
    pretrained encoder, on its frozen embedding (the checkpoint's mean-pooled output)."""
    from sklearn.cluster import AgglomerativeClustering, KMeans

    k = len(set(y_true))
    out: dict[str, Any] = {}
    feats = {"learned": C.normalize(e_test)}
    if cfg.model.encoder.kind in ("bert_top", "bert"):
        from jaxslu.nlu.bert import HFTokenizer, embed_sentences, load_pretrained
        from jaxslu.nlu.task import resolve_pretrained

        ckpt = resolve_pretrained(cfg.task_options.get("pretrained", ""))
        frozen = embed_sentences(load_pretrained(ckpt), HFTokenizer(ckpt / "tokenizer.json"),
                                 [r["text"] for r in test_rows])
        feats["frozen"] = C.normalize(frozen)
    for name, x in feats.items():
        km = KMeans(n_clusters=k, n_init=10, random_state=cfg.seed).fit_predict(x)
        ag = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
        out[f"kmeans_{name}"] = C.cluster_metrics(list(y_true), km.tolist())
        out[f"agglomerative_{name}"] = C.cluster_metrics(list(y_true), ag.tolist())
    return out
