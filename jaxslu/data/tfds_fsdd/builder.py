"""A TFDS `GeneratorBasedBuilder` for FSDD, reading the WAVs bundled in data/fsdd (manual_dir).

It shows how a corpus enters jaxslu through TensorFlow Datasets: prepared once as array_record
(which `as_data_source`, the random-access path grain uses, requires), then read with
`jaxslu.data.tfds_adapter.TfdsSource`. The split rule is the one of the "fsdd" source
(`jaxslu.data.sources.fsdd_in_split`: indices 0..4 test, 5..49 train), so both give the same
examples. Configs: "full" (all 2500 recordings) and "mini" (2 speakers, indices 0..6: 140
recordings, for tests and smoke runs).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

from jaxslu import paths
from jaxslu.data.sources import DIGIT_WORDS, fsdd_files, fsdd_in_split

SAMPLE_RATE = 8000


@dataclasses.dataclass
class JaxsluFsddConfig(tfds.core.BuilderConfig):
    """Which recordings to include: `speakers` (None: all) and indices < `max_index`."""

    speakers: tuple[str, ...] | None = None
    max_index: int = 50


class JaxsluFsdd(tfds.core.GeneratorBasedBuilder):
    """Free Spoken Digit Dataset from the jaxslu checkout: audio int16 8 kHz, text, digit label."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Bundled FSDD (5 speakers), standard index split."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "manual_dir is the folder holding recordings/ and speakers.json: data/fsdd of the jaxslu "
        "checkout (prepare_fsdd_tfds passes it for you).")
    BUILDER_CONFIGS = [
        JaxsluFsddConfig(name="full", description="All bundled recordings."),
        JaxsluFsddConfig(name="mini", description="george and jackson, indices 0..6.",
                         speakers=("george", "jackson"), max_index=7),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. TFDS's default lookup goes through `importlib_resources`, a package not
        installed here (it fails for builders in an editable install); the answer is the same."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "audio": tfds.features.Audio(shape=(None,), dtype=np.int16,
                                             sample_rate=SAMPLE_RATE),
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(num_classes=10),
                "speaker": tfds.features.Text(),
            }),
            supervised_keys=("audio", "label"),
            homepage="https://github.com/Jakobovski/free-spoken-digit-dataset",
            license="CC BY-SA 4.0",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(dl_manager.manual_dir)
        return {"train": self._generate_examples(root, "train"),
                "test": self._generate_examples(root, "test")}

    def _generate_examples(self, root: Path, split: str):
        import soundfile as sf

        cfg = self.builder_config
        for digit, speaker, index, path in fsdd_files(root):
            if cfg.speakers is not None and speaker not in cfg.speakers:
                continue
            if index >= cfg.max_index or not fsdd_in_split(index, speaker, split, None):
                continue
            audio, sr = sf.read(str(path), dtype="int16")
            if sr != SAMPLE_RATE or audio.ndim != 1:
                raise ValueError(f"{str(path)!r}: expected mono {SAMPLE_RATE} Hz audio, got "
                                 f"{sr} Hz with shape {audio.shape}")
            yield path.stem, {"id": path.stem, "audio": audio, "text": DIGIT_WORDS[digit],
                              "label": digit, "speaker": speaker}


def prepare_fsdd_tfds(data_dir: str | Path, config: str = "full",
                      manual_dir: str | Path | None = None) -> JaxsluFsdd:
    """Prepare `jaxslu_fsdd/<config>` as array_record under `data_dir` (no network) and return
    the builder; `manual_dir` defaults to the bundled data/fsdd."""
    builder = JaxsluFsdd(data_dir=str(data_dir), config=config, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir or paths.data_dir() / "fsdd"), try_download_gcs=False))
    return builder
