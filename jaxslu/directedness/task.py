"""The device-directedness task: is an utterance addressed to the assistant? Trained by the
common train loop on the features of jaxslu/directedness/features.py.

  dataset `directedness_features` (options: path = the features folder): split "train" /
    "test" of out_dir/<split>.npz; every example is one utterance (meta: label, delivery);
  model `directedness_classifier` (`DirectednessConfig`): `inputs` "acoustic", "semantic" or
    "both" (the fused model: both feature sets concatenated); each input standardized with the
    training split's statistics (features.json), then a linear layer (hidden=0: logistic
    regression) or one hidden GELU layer with dropout, to one logit;
  loss term `directed_bce`: binary cross-entropy of that logit, each class weighted to half the
    batch's weight (so the class ratio does not set the operating point);
  evaluator `directedness`: equal-error rate (jaxslu.fairness.sv_metrics.eer, scores = logits,
    target = directed), accuracy at logit 0, and the EER per delivery of the not-directed side
    (conversational vs plain) against all directed utterances.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslu.data.pipeline import pad_rows
from jaxslu.data.sources import ExampleSource
from jaxslu.layers.core import Dense, dropout
from jaxslu.registry import DATASETS, EVALUATORS, LOSSES, MODELS, TASKS
from jaxslu.task import Task

INPUTS = ("acoustic", "semantic", "both")


class FeatureSource(ExampleSource):
    """Examples of a features split; `features(i)` -> {"acoustic", "semantic"} float32."""

    def __init__(self, folder: Path, split: str):
        f = folder / f"{split}.npz"
        if not f.is_file():
            raise FileNotFoundError(f"directedness features {str(f)!r} not found; write them "
                                    "with scripts/directedness_experiment.py (or "
                                    "jaxslu.directedness.features.extract_features)")
        with np.load(f, allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files}
        self.folder = folder
        records = [{"id": str(i), "text": str(t), "intent": None, "entities": [], "speaker": "",
                    "meta": {"label": int(y), "delivery": str(d), "hypothesis": str(h)}}
                   for i, t, y, d, h in zip(self.arrays["ids"], self.arrays["texts"],
                                            self.arrays["label"], self.arrays["delivery"],
                                            self.arrays["hypotheses"])]
        super().__init__("directedness_features", split, records)

    def features(self, i: int) -> dict[str, np.ndarray]:
        return {"acoustic": self.arrays["acoustic"][i], "semantic": self.arrays["semantic"][i]}


@DATASETS.register("directedness_features")
def directedness_features(split: str = "train", *, path: str = "") -> FeatureSource:
    if not path:
        raise ValueError("directedness_features needs data.options.path: the folder "
                         "extract_features wrote (train.npz, test.npz, features.json)")
    return FeatureSource(Path(path), split)


@dataclasses.dataclass(frozen=True)
class DirectednessConfig:
    name: str = "directedness_classifier"
    inputs: str = "both"
    hidden: int = 0  # 0: logistic regression
    dropout: float = 0.1


@MODELS.register("directedness_classifier", config=DirectednessConfig)
class DirectednessClassifier(nnx.Module):
    def __init__(self, cfg: DirectednessConfig, *, acoustic_dim: int, semantic_dim: int,
                 rngs: nnx.Rngs):
        if cfg.inputs not in INPUTS:
            raise ValueError(f"model.inputs={cfg.inputs!r}: use one of {INPUTS}")
        self.cfg = cfg
        d = {"acoustic": acoustic_dim, "semantic": semantic_dim,
             "both": acoustic_dim + semantic_dim}[cfg.inputs]
        axes = (None, None)
        self.hidden = Dense(d, cfg.hidden, rngs=rngs, axes=axes) if cfg.hidden else None
        # Zero-initialized output: training starts from "no evidence" (logit 0) whatever the
        # number of inputs, as a logistic regression does.
        self.out = Dense(cfg.hidden or d, 1, rngs=rngs, axes=axes,
                         kernel_init=nnx.initializers.zeros)

    def __call__(self, batch, *, train: bool = False, rngs=None) -> dict[str, jax.Array]:
        parts = {"acoustic": [batch["acoustic"]], "semantic": [batch["semantic"]],
                 "both": [batch["acoustic"], batch["semantic"]]}[self.cfg.inputs]
        x = jnp.concatenate(parts, axis=-1).astype(jnp.float32)
        if self.hidden is not None:
            x = jax.nn.gelu(self.hidden(x))
        x = dropout(x, self.cfg.dropout, train=train, rngs=rngs)
        return {"directed_logit": self.out(x)[..., 0]}


@LOSSES.register("directed_bce")
def directed_bce():
    """Binary cross-entropy of outputs["directed_logit"] against batch["label"], classes
    balanced within the batch (each class's rows share half of the batch's weight)."""

    def term(batch, outputs, params):
        z = outputs["directed_logit"].astype(jnp.float32)
        y = batch["label"].astype(jnp.float32)
        w = batch["weight"].astype(jnp.float32)
        pos, neg = jnp.sum(w * y), jnp.sum(w * (1 - y))
        cw = w * jnp.where(y > 0.5, 0.5 / jnp.maximum(pos, 1.0), 0.5 / jnp.maximum(neg, 1.0))
        bce = jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
        value = jnp.sum(cw * bce) / jnp.maximum(jnp.sum(cw), 1e-9)
        acc = jnp.sum(w * ((z > 0) == (y > 0.5))) / jnp.maximum(jnp.sum(w), 1.0)
        return value, {"accuracy": acc}

    return term


@TASKS.register("directedness")
class DirectednessTask(Task):
    default_evaluator = "directedness"

    def _stats(self, source) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        info = json.loads((source.folder / "features.json").read_text())
        return {k: (np.asarray(v["mean"], np.float32), np.asarray(v["std"], np.float32))
                for k, v in info["standardize"].items()}

    def load_assets(self, workdir: Path) -> dict:
        return {}  # nothing is built from the data: sizes come from the features themselves

    def build_assets(self, source, scratch: Path) -> dict:
        return {}

    def model_kwargs(self, assets) -> dict[str, Any]:
        source = self.open_source(self.cfg.data.train_split)
        return {"acoustic_dim": int(source.arrays["acoustic"].shape[1]),
                "semantic_dim": int(source.arrays["semantic"].shape[1])}

    def prepare_fn(self, source, assets, *, train: bool, model=None, objective=None):
        stats = self._stats(source)

        def prepare(index: int):
            index = int(index)
            f = source.features(index)
            row = {k: (f[k] - stats[k][0]) / stats[k][1] for k in ("acoustic", "semantic")}
            row.update(label=int(source.arrays["label"][index]), index=index)
            return row

        return prepare

    def collate(self, rows, batch_size: int):
        a = len(rows[0]["acoustic"]) if rows else 1
        s = len(rows[0]["semantic"]) if rows else 1
        return pad_rows(rows, batch_size, {"acoustic": (np.float32, (a,), 0.0),
                                           "semantic": (np.float32, (s,), 0.0),
                                           "label": (np.int32, (), 0),
                                           "index": (np.int32, (), -1)})


def _logits(model, batch):
    return model(batch, train=False)["directed_logit"]


@EVALUATORS.register("directedness")
class DirectednessEvaluator:
    def __init__(self, run):
        self.run = run

    def evaluate(self, split: str) -> tuple[dict, list[dict]]:
        from jaxslu.fairness.sv_metrics import eer

        run = self.run
        source = run.task.open_source(split)
        scores: dict[int, float] = {}
        for batch in run.eval_batches(source):
            out, index, weight = run.apply(_logits, batch)
            for b, (idx, w) in enumerate(zip(index, weight)):
                if idx >= 0 and w > 0:
                    scores[int(idx)] = float(out[b])
        order = sorted(scores)
        s = np.asarray([scores[i] for i in order])
        y = np.asarray([int(source.arrays["label"][i]) for i in order])
        delivery = np.asarray([str(source.arrays["delivery"][i]) for i in order])
        report: dict[str, Any] = {"num_examples": len(order), "num_directed": int(y.sum()),
                                  "eer": eer(s, y), "accuracy": float(np.mean((s > 0) == (y == 1)))}
        per = {}
        for d in sorted(set(delivery[y == 0])):
            keep = (y == 1) | (delivery == d)
            per[d] = {"num_not_directed": int(np.sum((y == 0) & (delivery == d))),
                      "eer": eer(s[keep], y[keep])}
        report["per_delivery"] = {str(k): v for k, v in per.items()}
        records = [{"id": str(source.arrays["ids"][i]), "text": str(source.arrays["texts"][i]),
                    "hypothesis": str(source.arrays["hypotheses"][i]), "label": int(y[k]),
                    "delivery": str(delivery[k]), "score": round(float(s[k]), 5)}
                   for k, i in enumerate(order)]
        return report, records
