"""The audio transducer / end-to-end SLU task: audio in, transcript (+ intent, slots) out.

Assets: a tokenizer (`tokenizer.model`, trained on the training transcripts) and the label
vocabularies (`labels.json`: intents, BIO slot tags, speakers). Model arguments: the frontend
config, vocabulary size, number of intents and slot tags. Checks: the rnnt term's activation is
the model's joint activation, and no transcript is longer than its audio can carry.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxslu.data.labels import Vocabularies
from jaxslu.registry import TASKS
from jaxslu.slu.batching import AudioPreparer, audio_buckets, collate_audio
from jaxslu.task import Task


@dataclasses.dataclass
class RunAssets:
    """Tokenizer and label vocabularies of a transducer run."""

    tokenizer: Any
    vocab: Vocabularies
    context: Any = None  # jaxslu.context.ContextSchema when task_options.context is set


def transducer_model_kwargs(cfg, vocab_size: int, num_intents: int = 0,
                            num_slot_tags: int = 0, context_dim: int = 0) -> dict[str, Any]:
    """Constructor arguments of the transducer models (besides config and rngs)."""
    out = {"frontend_cfg": cfg.frontend, "vocab_size": vocab_size, "num_intents": num_intents,
           "num_slot_tags": num_slot_tags}
    if context_dim:
        out["context_dim"] = context_dim
    return out


def check_joint_activation(cfg) -> None:
    """The rnnt term recomputes the joint (act(enc + pred) @ W + b) from the model's outputs; its
    `activation` option must be the model's `joint_activation` or the loss trains another model."""
    model_act = getattr(cfg.model, "joint_activation", None)
    if model_act is None or "rnnt" not in cfg.loss:
        return
    term_act = dict(cfg.loss_options.get("rnnt", {})).get("activation", "tanh")
    if term_act != model_act:
        raise ValueError(f"loss_options.rnnt.activation={term_act!r} but the model's joint uses "
                         f"model.joint_activation={model_act!r}; set both to the same activation")


def label_capacity_fn(cfg, model, objective_names: Sequence[str]):
    """How many tokens an utterance of n samples can carry, for the data pipeline's length check.

    CTC needs at least one encoder frame per token; the transducer can emit several tokens per
    frame, but greedy decoding emits at most `eval.max_symbols_per_frame`, so a transcript longer
    than that many per frame could never be decoded. Models without `output_frames` get no check.
    """
    frames = getattr(model, "output_frames", None)
    if frames is None:
        return None
    if "ctc" in objective_names:
        return frames
    per_frame = max(1, cfg.eval.max_symbols_per_frame)
    return lambda n: frames(n) * per_frame


class CohortOf:
    """Task option `cohort_input`: which cohort an utterance belongs to, from its metadata.

    {"regions": [[lat_lo, lat_hi, lon_lo, lon_hi], ...]}: the first region holding the speaker's
    (lat, lon) (half-open intervals; the boxes `jaxslu cohorts --method geo` finds), or
    {"key": <record field or meta key>, "values": {<value>: <cohort index>}}.
    An utterance in no cohort gets -1 (the model adds no cohort embedding to it).
    """

    def __init__(self, spec: dict[str, Any]):
        spec = dict(spec)
        if "regions" in spec:
            regions = [tuple(float(v) for v in r) for r in spec["regions"]]
            if not regions or any(len(r) != 4 or r[0] >= r[1] or r[2] >= r[3] for r in regions):
                raise ValueError("task_options.cohort_input.regions must be a non-empty list of "
                                 "[lat_lo, lat_hi, lon_lo, lon_hi] boxes with lo < hi, got "
                                 f"{spec['regions']!r}")
            self.regions, self.key, self.values = regions, None, None
            self.size = len(regions)
        elif "key" in spec and isinstance(spec.get("values"), dict):
            self.regions, self.key = None, str(spec["key"])
            self.values = {str(k): int(v) for k, v in spec["values"].items()}
            self.size = max(self.values.values(), default=-1) + 1
        else:
            raise ValueError("task_options.cohort_input must be {'regions': [[lat_lo, lat_hi, "
                             "lon_lo, lon_hi], ...]} or {'key': <field>, 'values': {value: "
                             f"index}}}}, got {spec!r}")

    def __call__(self, meta: dict[str, Any]) -> int:
        inner = meta.get("meta") or {}
        if self.regions is not None:
            lat, lon = inner.get("lat", meta.get("lat")), inner.get("lon", meta.get("lon"))
            if lat is None or lon is None:
                raise ValueError(f"example {meta.get('id')!r} has no lat/lon in its metadata; "
                                 "cohort_input regions need the speakers' coordinates")
            for k, (a, b, c, d) in enumerate(self.regions):
                if a <= float(lat) < b and c <= float(lon) < d:
                    return k
            return -1
        value = meta.get(self.key, inner.get(self.key))
        return self.values.get(str(value), -1)


@TASKS.register("transducer_slu")
class TransducerSLUTask(Task):
    """Task options: `cohort_input` (CohortOf), `context` ("input": each example's
    meta["context"] (jaxslu/context/features.py) is fed to the intent head as a vector; "blind":
    zeros of the same size, the without-context baseline of the same model; "" (default): no
    context input). The context vocabularies are read from the training split (context.json)."""

    default_evaluator = "transducer_slu"

    def __init__(self, cfg):
        super().__init__(cfg)
        from jaxslu.context.features import context_mode

        self.context_mode = context_mode(self.options)
        self.context_dim = 0  # set from the assets (model_kwargs)

    @property
    def asset_files(self) -> tuple[str, ...]:
        extra = ("context.json",) if self.context_mode else ()
        return ("tokenizer.model", "labels.json") + extra

    def load_assets(self, workdir: Path) -> RunAssets | None:
        from jaxslu.text.tokenizer import Tokenizer

        if not all((workdir / f).exists() for f in self.asset_files):
            return None
        context = None
        if self.context_mode:
            from jaxslu.context import ContextSchema

            context = ContextSchema.load(workdir / "context.json")
        return RunAssets(Tokenizer.load(workdir / "tokenizer.model"),
                         Vocabularies.load(workdir / "labels.json"), context)

    def build_assets(self, source, scratch: Path) -> RunAssets:
        from jaxslu.text.tokenizer import Tokenizer

        texts = [source.text(i) if hasattr(source, "text") else source[i]["text"]
                 for i in range(len(source))]
        scratch.mkdir(parents=True, exist_ok=True)
        tok = self.cfg.tokenizer
        tokenizer = Tokenizer.train(texts, kind=tok.kind, vocab_size=tok.vocab_size,
                                    model_path=scratch / "tokenizer.model")
        context = None
        if self.context_mode:
            from jaxslu.context.features import schema_of_source

            context = schema_of_source(source)
        return RunAssets(tokenizer, Vocabularies.from_source(source), context)

    def save_assets(self, assets: RunAssets, workdir: Path) -> None:
        assets.tokenizer.save(workdir / "tokenizer.model")
        assets.vocab.save(workdir / "labels.json")
        if assets.context is not None:
            assets.context.save(workdir / "context.json")

    def model_kwargs(self, assets: RunAssets) -> dict[str, Any]:
        if bool(self.context_mode) != (assets.context is not None):
            raise ValueError(f"task_options.context={self.context_mode!r} but the run's assets "
                             f"{'lack' if self.context_mode else 'have'} a context schema "
                             "(context.json); use a fresh workdir for a new setting")
        self.context_dim = assets.context.dim if assets.context is not None else 0
        return transducer_model_kwargs(self.cfg, assets.tokenizer.vocab_size,
                                       len(assets.vocab.intents), len(assets.vocab.tags),
                                       self.context_dim)

    @property
    def cohort_of(self) -> CohortOf | None:
        spec = self.options.get("cohort_input")
        return CohortOf(spec) if spec else None

    def check(self, model, objective) -> None:
        check_joint_activation(self.cfg)
        cohorts = self.cohort_of
        wanted = getattr(self.cfg.model, "num_cohorts", 0)
        if (cohorts.size if cohorts else 0) != wanted:
            raise ValueError(f"model.num_cohorts={wanted} but task_options.cohort_input defines "
                             f"{cohorts.size if cohorts else 0} cohorts; set both together")

    def prepare_fn(self, source, assets: RunAssets, *, train: bool, model=None, objective=None):
        frames = None
        if train and model is not None:
            names = objective.names if objective is not None else ()
            frames = label_capacity_fn(self.cfg, model, names)
        prepare = AudioPreparer(source, assets.tokenizer, assets.vocab, self.cfg.data,
                                self.cfg.frontend.sample_rate, frames, augment=train)
        cohort_of, schema = self.cohort_of, assets.context
        if cohort_of is None and schema is None:
            return prepare
        blind = self.context_mode == "blind"

        def with_inputs(index, rng=None):
            row = prepare(index, rng)
            if isinstance(row, dict):
                meta = source.metadata(int(index))
                if cohort_of is not None:
                    row["cohort"] = cohort_of(meta)
                if schema is not None:
                    vec = schema.encode((meta.get("meta") or {}).get("context"),
                                        f"example {meta.get('id', index)!r} meta['context']")
                    row["context"] = np.zeros_like(vec) if blind else vec
            return row

        with_inputs.wants_rng = prepare.wants_rng
        return with_inputs

    def pad_values(self):
        from jaxslu.data.batch import BLANK_ID, IGNORE_TAG
        return {"audio": 0.0, "tokens": BLANK_ID, "slot_tags": IGNORE_TAG}

    def collate(self, rows, batch_size: int):
        data = self.cfg.data
        out = collate_audio(rows, batch_size, audio_buckets(data, self.cfg.frontend.sample_rate),
                            sorted(set(data.label_buckets)))
        if self.options.get("cohort_input"):
            out["cohort"] = np.full((batch_size,), -1, np.int32)
            out["cohort"][: len(rows)] = [int(r["cohort"]) for r in rows]
        if self.context_mode:
            dim = self.context_dim or (len(rows[0]["context"]) if rows else 0)
            out["context"] = np.zeros((batch_size, dim), np.float32)
            for k, r in enumerate(rows):
                out["context"][k] = r["context"]
        return out
