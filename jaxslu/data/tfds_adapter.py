"""TensorFlow Datasets as a jaxslu data source: `builder.as_data_source(split)` -> Example dicts.

`as_data_source` is TFDS's random-access (grain-compatible) reader; it needs the dataset prepared
as array_record (`file_format="array_record"` when preparing). TFDS is imported only when a
TfdsSource is built, so the rest of jaxslu does not pay for TensorFlow at import time.

Design choices: integer audio (TFDS `Audio` features are usually int16) is scaled to [-1, 1] by
its dtype's range; the sample rate comes from `sample_rate_key` (a per-example feature), else the
explicit `sample_rate`, else the audio feature's declared rate. Byte strings decode as UTF-8.
Class-label intents are turned into their names (`ClassLabel.int2str`) so vocabularies see names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxslu.registry import DATASETS


def _to_str(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _to_float_audio(audio: Any) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim == 2:  # [N, channels] -> mono
        audio = audio.mean(axis=1) if np.issubdtype(audio.dtype, np.floating) else \
            audio.astype(np.float64).mean(axis=1).astype(audio.dtype)
    if np.issubdtype(audio.dtype, np.integer):
        return (audio.astype(np.float32) / float(-np.iinfo(audio.dtype).min)).astype(np.float32)
    return audio.astype(np.float32)


class TfdsSource:
    """A TFDS dataset split behind the jaxslu Example contract (docs/DESIGN.md).

    Args:
      builder_or_name: a prepared `tfds.core.DatasetBuilder`, or a registered TFDS name
        ("spoken_digit", "jaxslu_fsdd/mini", ...) looked up with `tfds.builder` in `data_dir`.
      split: a TFDS split ("train", "test[:10%]", ...).
      audio_key, text_key: feature names of the waveform and the transcript.
      sample_rate_key / sample_rate: where the sample rate comes from (see module docstring).
      intent_key, speaker_key, id_key: optional features for intent, speaker and example id
        (default id: "<name>/<split>/<i>").
    """

    def __init__(self, builder_or_name: Any, split: str, *, data_dir: str | Path | None = None,
                 audio_key: str = "audio", text_key: str = "text",
                 sample_rate_key: str | None = None, sample_rate: int | None = None,
                 intent_key: str | None = None, speaker_key: str | None = None,
                 id_key: str | None = None):
        import tensorflow_datasets as tfds

        if isinstance(builder_or_name, str):
            builder = tfds.builder(builder_or_name,
                                   data_dir=str(data_dir) if data_dir is not None else None)
        else:
            builder = builder_or_name
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {builder.info.full_name!r} is not prepared in "
                f"{str(builder.data_dir)!r}; prepare it with file_format='array_record' "
                "(e.g. jaxslu.data.tfds_fsdd.prepare_fsdd_tfds) or pass data_dir")
        features = builder.info.features
        for role, key in (("audio_key", audio_key), ("text_key", text_key),
                          ("sample_rate_key", sample_rate_key), ("intent_key", intent_key),
                          ("speaker_key", speaker_key), ("id_key", id_key)):
            if key is not None and key not in features:
                raise KeyError(f"{role}={key!r} is not a feature of {builder.info.full_name!r}; "
                               f"its features are {sorted(features.keys())}")
        if sample_rate_key is None and sample_rate is None:
            sample_rate = getattr(features[audio_key], "sample_rate", None)
            if sample_rate is None:
                raise ValueError(f"{builder.info.full_name!r} does not declare the sample rate of "
                                 f"{audio_key!r}; pass sample_rate= or sample_rate_key=")
        try:
            self._data = builder.as_data_source(split)
        except (NotImplementedError, ValueError, FileNotFoundError) as e:
            raise ValueError(f"cannot read {builder.info.full_name!r} split {split!r} randomly: "
                             f"{e}. as_data_source needs the dataset prepared with "
                             "file_format='array_record'") from e
        self.name = builder.info.full_name
        self.split = split
        self._keys = dict(audio=audio_key, text=text_key, sr=sample_rate_key, intent=intent_key,
                          speaker=speaker_key, id=id_key)
        self._sample_rate = sample_rate
        intent_feature = features[intent_key] if intent_key else None
        self._intent_names = getattr(intent_feature, "names", None) \
            if isinstance(intent_feature, tfds.features.ClassLabel) else None

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, n={len(self)})"

    def _meta_from(self, i: int, row: dict[str, Any]) -> dict[str, Any]:
        k = self._keys
        intent = None
        if k["intent"]:
            value = row[k["intent"]]
            intent = self._intent_names[int(value)] if self._intent_names else _to_str(value)
        return {"id": _to_str(row[k["id"]]) if k["id"] else f"{self.name}/{self.split}/{i}",
                "text": _to_str(row[k["text"]]), "intent": intent, "entities": [],
                "speaker": _to_str(row[k["speaker"]]) if k["speaker"] else "", "meta": {}}

    def _row(self, i: int) -> dict[str, Any]:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self):
            raise IndexError(f"example index {i!r} out of range for {self!r}")
        return self._data[int(i)]

    def text(self, i: int) -> str:
        return self.metadata(i)["text"]

    def metadata(self, i: int) -> dict[str, Any]:
        """Decodes the whole TFDS record (array_record stores it as one); audio is dropped."""
        return self._meta_from(int(i), self._row(i))

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self._row(i)
        example = self._meta_from(int(i), row)
        example["audio"] = _to_float_audio(row[self._keys["audio"]])
        example["sample_rate"] = int(row[self._keys["sr"]]) if self._keys["sr"] \
            else int(self._sample_rate)
        return example


@DATASETS.register("tfds")
def tfds_source(split: str = "train", *, name: str = "", data_dir: str | None = None,
                **keys: Any) -> TfdsSource:
    """Dataset "tfds": options name (TFDS name, e.g. "jaxslu_fsdd/mini"), data_dir and the
    TfdsSource key options (audio_key, text_key, sample_rate_key, sample_rate, intent_key,
    speaker_key, id_key). Importing jaxslu.data.tfds_fsdd registers the "jaxslu_fsdd" builder."""
    if not name:
        raise ValueError("dataset 'tfds' needs data.options.name=<TFDS dataset name>")
    if name.split("/")[0] == "jaxslu_fsdd":
        import jaxslu.data.tfds_fsdd  # noqa: F401  (registers the builder with TFDS)
    return TfdsSource(name, split, data_dir=data_dir, **keys)
