"""The intent-discovery embedding task: grouped labeled utterances -> an embedding trained with
`pairwise_margin` (+ the cosine classifier's `intent_ce`), on the core trainer.

Source: `intent_groups` (jaxslu/discovery/data.py): each record is a group of `group_size` rows
of one intent, so a batch of `data.batch_size` groups holds batch_size * group_size rows.

Assets: `labels.json` (the intents the embedding is trained on); with a pretrained encoder its
architecture `encoder_config.json` (and `tokenizer.json` for "bert"); from scratch the project's
`tokenizer.model` trained on the source's texts.

Task options: pretrained ("all-MiniLM-L6-v2": a folder or known name, see jaxslu.nlu.task),
features (for "bert_top": the FeatureStore folder of the frozen bottom's token states; each row
carries its `feature_row` in it), max_tokens (48).

Batch (flattened groups): `features` [N, L, H] float32 ("bert_top") or `tokens` [N, L] int32,
`lengths` [N], `intent` [N] (-1 none), `weight` [N], `index` [N] (the group's source index).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jaxslu.data.pipeline import DataError, Skipped, bucket_for
from jaxslu.registry import TASKS
from jaxslu.task import Task


class DiscoveryAssets:
    def __init__(self, labels: list[str], tokenizer: Any = None, bert_config: Any = None):
        self.labels = list(labels)
        self.label_id = {x: i for i, x in enumerate(self.labels)}
        self.tokenizer = tokenizer
        self.bert_config = bert_config


@TASKS.register("intent_discovery")
class DiscoveryTask(Task):
    default_evaluator = ""

    def __init__(self, cfg):
        super().__init__(cfg)
        unknown = set(self.options) - {"pretrained", "features", "max_tokens"}
        if unknown:
            raise ValueError(f"task_options {sorted(unknown)} unknown for intent_discovery; it "
                             "takes pretrained, features, max_tokens")
        self.kind = cfg.model.encoder.kind
        self.max_tokens = int(self.options.get("max_tokens", 48))
        self._store = None

    @property
    def asset_files(self) -> tuple[str, ...]:
        return {"bert_top": ("labels.json", "encoder_config.json"),
                "bert": ("labels.json", "encoder_config.json", "tokenizer.json"),
                }.get(self.kind, ("labels.json", "tokenizer.model"))

    @property
    def store(self):
        if self._store is None:
            from jaxslu.discovery.features import FeatureStore

            path = self.options.get("features", "")
            if not path:
                raise ValueError("model.encoder.kind='bert_top' needs task_options.features: the "
                                 "FeatureStore folder of the frozen layers' token states")
            self._store = FeatureStore(path)
        return self._store

    def _checkpoint(self) -> Path:
        from jaxslu.nlu.task import resolve_pretrained

        return resolve_pretrained(self.options.get("pretrained", ""))

    # -- assets -----------------------------------------------------------------------------

    def load_assets(self, workdir: Path) -> DiscoveryAssets | None:
        if not all((workdir / f).exists() for f in self.asset_files):
            return None
        labels = json.loads((workdir / "labels.json").read_text())["intents"]
        if self.kind == "transformer":
            from jaxslu.nlu.task import SentencePieceText
            from jaxslu.text.tokenizer import Tokenizer

            return DiscoveryAssets(labels, SentencePieceText(
                Tokenizer.load(workdir / "tokenizer.model")))
        from jaxslu.nlu.bert import BertConfig

        tok = None
        if self.kind == "bert":
            from jaxslu.nlu.task import WordPieceText
            tok = WordPieceText(workdir / "tokenizer.json")
        return DiscoveryAssets(labels, tok, BertConfig.from_hf_json(workdir / "encoder_config.json"))

    def build_assets(self, source, scratch: Path) -> DiscoveryAssets:
        scratch.mkdir(parents=True, exist_ok=True)
        labels = source.labels()
        if len(labels) < 2:
            raise DataError(f"{source!r} has {len(labels)} labeled intent(s); the pairwise loss "
                            "needs at least two")
        if self.kind == "transformer":
            from jaxslu.nlu.task import SentencePieceText
            from jaxslu.text.tokenizer import Tokenizer

            tok = self.cfg.tokenizer
            texts = [r["text"] for r in source.rows]
            tokenizer = Tokenizer.train(texts, kind=tok.kind, vocab_size=tok.vocab_size,
                                        model_path=scratch / "tokenizer.model")
            return DiscoveryAssets(labels, SentencePieceText(tokenizer))
        from jaxslu.nlu.bert import BertConfig

        ckpt = self._checkpoint()
        shutil.copyfile(ckpt / "config.json", scratch / "encoder_config.json")
        tok = None
        if self.kind == "bert":
            from jaxslu.nlu.task import WordPieceText
            shutil.copyfile(ckpt / "tokenizer.json", scratch / "tokenizer.json")
            tok = WordPieceText(scratch / "tokenizer.json")
        assets = DiscoveryAssets(labels, tok, BertConfig.from_hf_json(scratch / "encoder_config.json"))
        assets.scratch = scratch
        return assets

    def save_assets(self, assets: DiscoveryAssets, workdir: Path) -> None:
        tmp = workdir / f".labels.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps({"intents": assets.labels}, indent=1))
        tmp.replace(workdir / "labels.json")
        if self.kind == "transformer":
            assets.tokenizer.tokenizer.save(workdir / "tokenizer.model")
            return
        for name in self.asset_files[1:]:
            t = workdir / f".{name}.tmp{os.getpid()}"
            shutil.copyfile(assets.scratch / name, t)
            t.replace(workdir / name)

    def model_kwargs(self, assets: DiscoveryAssets) -> dict[str, Any]:
        vocab = assets.tokenizer.vocab_size if assets.tokenizer is not None else 0
        return {"num_classes": len(assets.labels), "vocab_size": vocab,
                "bert_config": assets.bert_config}

    def check(self, model, objective) -> None:
        if self.kind == "bert_top":
            meta = self.store.meta
            layers = model.cfg.trainable_layers
            total = self.store.meta.get("total_layers")
            if total is not None and meta["frozen_layers"] + layers != total:
                raise ValueError(f"the feature store holds layer {meta['frozen_layers']} states "
                                 f"but model.trainable_layers={layers} of {total} layers needs "
                                 f"layer {total - layers}; rebuild the store")

    def init_params(self, params, assets: DiscoveryAssets):
        if self.kind == "transformer":
            return params
        from flax import nnx

        from jaxslu.nlu.bert import load_pretrained
        from jaxslu.train.warm_start import flat_params, merge_params

        ckpt = self._checkpoint()
        encoder = load_pretrained(ckpt)
        flat: dict[str, np.ndarray] = {}
        if self.kind == "bert":
            _, p, _ = nnx.split(encoder, nnx.Param, ...)
            flat = {f"encoder/bert/{k}": np.asarray(v) for k, v in flat_params(p).items()}
        else:
            n = self.cfg.model.trainable_layers
            total = len(encoder.layers)
            for j in range(n):
                _, p, _ = nnx.split(encoder.layers[total - n + j], nnx.Param, ...)
                flat.update({f"layers/{j}/{k}": np.asarray(v) for k, v in flat_params(p).items()})
            if not flat:
                return params
        merged, (_, _, unused) = merge_params(params, flat, str(ckpt))
        if unused:
            raise ValueError(f"pretrained encoder {ckpt}: tensors {unused[:5]} found no place in "
                             "the discovery encoder")
        return merged

    # -- batches ----------------------------------------------------------------------------

    def encode_row(self, assets: DiscoveryAssets, row: dict[str, Any]) -> np.ndarray:
        """One utterance's model input: token states [L, H] float16 or token ids [L]."""
        if self.kind == "bert_top":
            return self.store.get(int(row["feature_row"]))[: self.max_tokens]
        ids, _ = assets.tokenizer.encode_words(row["text"].split(), self.max_tokens)
        return np.asarray(ids, np.int32)

    def prepare_fn(self, source, assets, *, train: bool, model=None, objective=None):
        skip = self.cfg.data.skip_bad_examples

        def prepare(index: int):
            index = int(index)
            m = source.metadata(index)
            xs, labels = [], []
            for r in m["members"]:
                x = self.encode_row(assets, r)
                if len(x) == 0:
                    msg = f"row {r['text']!r} of {source!r} encodes to no tokens"
                    if skip:
                        return Skipped(msg)
                    raise DataError(msg + "; drop it or set data.skip_bad_examples=True")
                xs.append(x)
                labels.append(assets.label_id.get(r["label"], -1) if r["label"] else -1)
            return {"x": xs, "labels": labels, "index": index}

        return prepare

    def pad_values(self):
        return {"features": 0.0} if self.kind == "bert_top" else {"tokens": 0}

    def collate(self, rows, batch_size: int):
        k = max((len(r["x"]) for r in rows), default=1)
        n = batch_size * k
        length = max((len(x) for r in rows for x in r["x"]), default=1)
        bucket = bucket_for(max(length, 1), sorted(set(self.cfg.data.label_buckets)))
        if bucket is None:
            raise AssertionError("utterance longer than the largest bucket reached collate")
        if self.kind == "bert_top":
            key, x = "features", np.zeros((n, bucket, self.store.dim), np.float32)
        else:
            key, x = "tokens", np.zeros((n, bucket), np.int32)
        lengths = np.zeros((n,), np.int32)
        intent = np.full((n,), -1, np.int32)
        weight = np.zeros((n,), np.float32)
        index = np.full((n,), -1, np.int32)
        j = 0
        for r in rows:
            for xi, lab in zip(r["x"], r["labels"]):
                x[j, :len(xi)] = xi
                lengths[j], intent[j], weight[j], index[j] = len(xi), lab, 1.0, r["index"]
                j += 1
        return {key: x, "lengths": lengths, "intent": intent, "weight": weight, "index": index}
