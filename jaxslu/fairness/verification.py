"""Speaker verification with fair (adversarial) reweighting: the `speaker_panel` source, the
`speaker_verification` task, the `ecapa` model, the `aam_softmax`, `arw` and `pairwise_arw`
loss terms and the `speaker_verification` evaluator.

    jaxslu train --config configs/speaker_verification.py:arw --workdir runs/fairness/sv_arw --eval

Data (`speaker_panel`, see `jaxslu.fairness.speakers`): synthetic eSpeak NG speakers balanced
over accent x gender, split disjointly into train / test speakers, plus FSDD's real speakers in
training (and their held-out recordings as split "fsdd_test").

Task choices that were open:
* A training row is `views` (default 2) utterances of one speaker: the indexed one and a partner
  utterance of the same speaker, chosen from a hash of (seed, index) (fixed per example, so
  batches are exact on resume). Every batch therefore holds same-speaker pairs for the pairwise
  objective; the baseline and ARW runs see the very same batches. Batch: audio [B, V, N],
  audio_lengths [B, V], speaker [B], index [B], weight [B]; eval rows are single utterances
  (audio [B, N], audio_lengths [B], speaker -1 where unknown).
* Random crops: when training, the model cuts a random `crop_seconds` window (key from
  rngs.augment, i.e. from the step) out of each utterance before the features, so each visit of
  an utterance is a different segment at one fixed shape; evaluation embeds whole utterances.
* Assets: `sv_speakers.json`, the training speakers (class index = position) with their gender,
  accent and corpus.

Model (`ecapa`, ECAPA-TDNN-lite, Desplanques et al. 2020): log-mel (jaxslu.audio.frontend, as
the transducer's `features`; `feature_norm="level"` normalizes each utterance by one mean and
variance over all its cells instead of per mel bin, keeping the spectral envelope; in
development runs of the baseline (600 steps) it moved the test EER from 9.9% to 9.6% and the
FSDD held-out EER from 24% to 4.2%) -> Conv1d(k=5) -> SE-Res2
blocks with dilations `dilations` -> multi-layer feature aggregation (concatenated block outputs,
1x1 conv) -> attentive statistics pooling with global context -> LayerNorm -> embedding.
LayerNorm over channels replaces BatchNorm (no batch statistics). Every convolution zeroes the
frames past a row's length first and every statistic (SE means, attention softmax, pooled
mean / std) runs over valid frames only, so an embedding does not depend on the padding.
The AAM class weights [embed, speakers] are a model parameter returned as `speaker_weight`.

Adversarial reweighting (ARW, Lahoti et al. 2020; for SV: Jin et al., Interspeech 2022):
* `adversary` submodule (so `optim.groups` pattern "^adversary/" with "maximize": True makes it
  ascend the objective the learner descends: the min-max step variant): an MLP on
  [stop_gradient(L2-normalized embedding), a learned embedding of the speaker label y_i (+ region
  features, below)] -> logit; a_i = sigmoid(logit). The embedding enters under stop_gradient, so
  the weights pass no gradient to the learner except through the per-example losses.
* `arw`: lambda_i = 1 + n a_i / sum_j a_j over the n real rows (padding rows get 0; sum
  lambda = 2n), loss = (1/n) sum_i lambda_i l_i with l_i the per-example AAM-softmax loss.
* `pairwise_arw`: a pair loss on the batch's pairs (i < j, real rows): logistic on the scaled
  cosine, softplus(-s (cos_ij - b)) for same-speaker pairs and softplus(s (cos_ij - b)) for
  different-speaker ones, each pair weighted by lambda_i + lambda_j; target and non-target
  pairs are averaged separately and added (class-balanced: a batch has ~V-1 same-speaker
  partners per row against ~M different-speaker ones). Used beside an unweighted
  `aam_softmax`.
* Regions (`kmeans_regions` K > 0, used by pairwise ARW): spherical k-means of the batch's
  (stop-gradient, normalized) embeddings, real rows only, farthest-point initialization from the
  first real row, `kmeans_iterations` Lloyd steps. The batch's cluster *ids* are arbitrary (a
  permutation per batch), so the adversary does not see ids: it sees each sample's region by
  its centroid (E values), its cosine to the centroid and the region's share of the batch,
  features that mean the same in every batch. Chosen over running centroids kept as a task
  constant because constants are frozen (never updated) and centroids of the initial model
  would describe a space the training leaves.

Evaluator: each utterance is embedded (whole, length-masked), trials are scored by cosine, EER
and minDCF (p_target 0.01 and 0.05, C_miss = C_fa = 1, normalized; `sv_metrics`) are reported
overall and per cohort (gender, accent) with the gender gap (EER female - male; relative: its
absolute value over the mean of the two) and the accent spread (max - min EER). Trial lists are
balanced per accent x gender cell (`speakers.make_trials`, seeded by task_options.trial_seed);
"fsdd_test" is one cell (all FSDD speakers are male). Records: one per trial (ids, speakers,
target, score, cell).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslu import paths
from jaxslu.config import FrontendConfig
from jaxslu.eval.run import LoadedRun
from jaxslu.fairness import speakers as SP
from jaxslu.fairness import sv_metrics
from jaxslu.layers.core import Dense, Embed, LayerNorm, length_mask, param, stream_key
from jaxslu.registry import DATASETS, EVALUATORS, LOSSES, MODELS, TASKS
from jaxslu.task import Task

log = logging.getLogger(__name__)

ASSET_FILE = "sv_speakers.json"
SPLITS = ("train", "test", "fsdd_test", "all")
ADVERSARIAL_TERMS = ("arw", "pairwise_arw")

# ------------------------------------------------------------------------------------------
# Data source
# ------------------------------------------------------------------------------------------


def _fsdd_records(split: str, per_speaker: int, seed: int) -> list[dict[str, Any]]:
    """FSDD recordings as panel records: "train" = `per_speaker` of each speaker's train
    indices (5..49), spread evenly over the digits; "fsdd_test" = all test indices (0..4)."""
    from jaxslu.data.sources import DIGIT_WORDS, fsdd_files

    root = paths.data_dir() / "fsdd"
    info = json.loads((root / "speakers.json").read_text())
    files = fsdd_files(root)
    by: dict[tuple[str, int], list[tuple[int, Path]]] = {}
    for digit, speaker, index, path in files:
        if (index < 5) == (split == "fsdd_test"):
            by.setdefault((speaker, digit), []).append((index, path))
    out = []
    for spk in sorted({s for s, _ in by}):
        chosen: list[tuple[int, int, Path]] = []
        if split == "fsdd_test":
            chosen = [(d, i, p) for d in range(10) for i, p in sorted(by.get((spk, d), []))]
        else:
            rng = np.random.default_rng([seed, 17, sum(map(ord, spk))])
            quota = [per_speaker // 10 + (d < per_speaker % 10) for d in range(10)]
            for d in range(10):
                items = sorted(by.get((spk, d), []))
                if quota[d] > len(items):
                    raise ValueError(f"fsdd_train_per_speaker={per_speaker} asks for "
                                     f"{quota[d]} recordings of digit {d} by {spk!r}, which has "
                                     f"{len(items)} in FSDD's train indices")
                pick = np.sort(rng.permutation(len(items))[:quota[d]])
                chosen += [(d, items[k][0], items[k][1]) for k in pick]
        meta = info.get(spk, {})
        for d, i, p in chosen:
            out.append({"id": f"fsdd/{p.stem}", "text": DIGIT_WORDS[d], "intent": None,
                        "entities": [], "speaker": f"fsdd_{spk}", "audio_path": p,
                        "meta": {"gender": meta.get("gender", ""),
                                 "accent": meta.get("accent", ""), "corpus": "fsdd",
                                 "voice": "", "variant": ""}})
    return out


@DATASETS.register("speaker_panel")
def speaker_panel(split: str = "train", *, num_speakers: int = 192,
                  utterances_per_speaker: int = 20, seed: int = 0,
                  voices: Sequence[str] | None = None, test_fraction: float = 1 / 3,
                  noise_snr_db: Sequence[float] | None = (15.0, 35.0), max_seconds: float = 4.0,
                  min_words: int = 5, max_words: int = 11, fsdd_train_per_speaker: int = 40,
                  cache_dir: str = "", sample_rate: int = 16000):
    """Synthetic speaker panel (+ FSDD): splits "train" (train speakers + FSDD train
    recordings), "test" (test speakers), "fsdd_test" (FSDD held-out recordings), "all" (train +
    test synthetic speakers). Rendered once into cache_dir/speaker_panel-<hash>."""
    from jaxslu.data.sources import ExampleSource

    if split not in SPLITS:
        raise ValueError(f"speaker_panel split {split!r} unknown; use one of {SPLITS}")
    if isinstance(fsdd_train_per_speaker, bool) or not isinstance(fsdd_train_per_speaker, int) \
            or fsdd_train_per_speaker < 0:
        raise ValueError(f"fsdd_train_per_speaker must be an int >= 0, got "
                         f"{fsdd_train_per_speaker!r}")
    if split == "fsdd_test":
        return ExampleSource("speaker_panel", split, _fsdd_records(split, 0, seed))
    params = SP.panel_params(num_speakers=num_speakers,
                             utterances_per_speaker=utterances_per_speaker, seed=seed,
                             voices=voices, test_fraction=test_fraction,
                             noise_snr_db=noise_snr_db, max_seconds=max_seconds,
                             min_words=min_words, max_words=max_words, sample_rate=sample_rate)
    out = SP.panel_dir(params, cache_dir)
    manifest = out / "manifest.jsonl"
    if not manifest.is_file():
        log.info("rendering the speaker panel (%d speakers) into %s", num_speakers, out)
        manifest = SP.build_speaker_panel(out, params)
    records = []
    for r in SP.read_panel_manifest(manifest):
        if split == "all" or r["split"] == split:
            records.append({"id": r["id"], "text": r["text"], "intent": None, "entities": [],
                            "speaker": r["speaker"], "audio_path": out / r["path"],
                            "meta": {"gender": r["gender"], "accent": r["accent"],
                                     "corpus": "espeak", "voice": r["voice"],
                                     "variant": r["variant"]}})
    if split == "train" and fsdd_train_per_speaker:
        records += _fsdd_records("train", fsdd_train_per_speaker, seed)
    return ExampleSource("speaker_panel", split, records)


# ------------------------------------------------------------------------------------------
# Task
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SpeakerAssets:
    speakers: list[str]  # class index = position
    info: dict[str, dict]  # speaker -> {gender, accent, corpus, utterances}

    def __post_init__(self):
        self.index = {s: i for i, s in enumerate(self.speakers)}


class SpeakerPreparer:
    """index -> row (audio at the frontend's rate, checked; training rows with `views`)."""

    def __init__(self, source, assets: SpeakerAssets, *, views: int, sample_rate: int,
                 max_samples: int, seed: int):
        self.source, self.assets, self.views = source, assets, views
        self.sample_rate, self.max_samples, self.seed = sample_rate, max_samples, seed
        self.by_speaker: dict[str, list[int]] = {}
        if views > 1:
            for i in range(len(source)):
                self.by_speaker.setdefault(source.metadata(i)["speaker"], []).append(i)

    def audio(self, index: int) -> np.ndarray:
        from jaxslu.audio.io import resample
        from jaxslu.data.pipeline import DataError

        ex = self.source[index]
        if ex["audio"] is None:
            raise DataError(f"example {ex['id']!r} has no audio")
        x = np.asarray(ex["audio"], np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"example {ex['id']!r} has NaN or infinite audio samples")
        if int(ex["sample_rate"]) != self.sample_rate:
            x = resample(x, int(ex["sample_rate"]), self.sample_rate)
        if len(x) > self.max_samples:
            raise DataError(f"example {ex['id']!r} has {len(x) / self.sample_rate:.2f} s of "
                            f"audio, more than the largest bucket "
                            f"({self.max_samples / self.sample_rate:g} s); add a larger value "
                            "to data.bucket_seconds")
        return x

    def partner(self, index: int, j: int) -> int:
        """The j-th partner of `index`: another utterance of its speaker, from a hash of
        (seed, index, j)."""
        spk = self.source.metadata(index)["speaker"]
        others = [i for i in self.by_speaker[spk] if i != index]
        if not others:
            from jaxslu.data.pipeline import DataError
            raise DataError(f"speaker {spk!r} has one utterance; task_options.views="
                            f"{self.views} needs at least 2 per training speaker")
        h = hashlib.sha256(f"{self.seed}/{index}/{j}".encode()).digest()
        return others[int.from_bytes(h[:8], "little") % len(others)]

    def __call__(self, index: int) -> dict[str, Any]:
        index = int(index)
        spk = self.source.metadata(index)["speaker"]
        label = self.assets.index.get(spk, -1)
        if self.views == 1:
            return {"audio": self.audio(index), "speaker": label, "index": index}
        idx = [index] + [self.partner(index, j) for j in range(1, self.views)]
        return {"views": [self.audio(i) for i in idx], "speaker": label, "index": index}


@TASKS.register("speaker_verification")
class SpeakerVerificationTask(Task):
    default_evaluator = "speaker_verification"
    asset_files = (ASSET_FILE,)
    OPTIONS = ("views", "trials_per_cell", "fsdd_trials", "trial_seed")

    def __init__(self, cfg):
        super().__init__(cfg)
        unknown = set(self.options) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"task_options {sorted(unknown)} unknown for speaker_verification; "
                             f"it takes {', '.join(self.OPTIONS)}")
        self.views = int(self.options.get("views", 2))
        if self.views < 1:
            raise ValueError(f"task_options.views={self.views} must be >= 1")
        self.trials_per_cell = int(self.options.get("trials_per_cell", 400))
        self.fsdd_trials = int(self.options.get("fsdd_trials", 1000))
        self.trial_seed = int(self.options.get("trial_seed", 0))
        sr = cfg.frontend.sample_rate
        self.buckets = sorted({int(round(s * sr)) for s in cfg.data.bucket_seconds})
        if not self.buckets:
            raise ValueError("data.bucket_seconds must not be empty")

    def load_assets(self, workdir: Path):
        p = Path(workdir) / ASSET_FILE
        if not p.is_file():
            return None
        d = json.loads(p.read_text())
        return SpeakerAssets(d["speakers"], d["info"])

    def build_assets(self, source, scratch: Path):
        info: dict[str, dict] = {}
        for i in range(len(source)):
            m = source.metadata(i)
            d = info.setdefault(m["speaker"], {"gender": m["meta"].get("gender", ""),
                                               "accent": m["meta"].get("accent", ""),
                                               "corpus": m["meta"].get("corpus", ""),
                                               "utterances": 0})
            d["utterances"] += 1
        few = sorted(s for s, d in info.items() if d["utterances"] < max(2, self.views))
        if few:
            raise ValueError(f"training speakers {few[:5]} have fewer than "
                             f"{max(2, self.views)} utterances; speaker classification with "
                             f"{self.views} views per row needs more")
        if len(info) < 2:
            raise ValueError(f"the training source {source!r} has {len(info)} speaker(s); "
                             "speaker classification needs at least 2")
        return SpeakerAssets(sorted(info), info)

    def save_assets(self, assets: SpeakerAssets, workdir: Path) -> None:
        tmp = Path(workdir) / f".{ASSET_FILE}.tmp{os.getpid()}"
        tmp.write_text(json.dumps({"speakers": assets.speakers, "info": assets.info}, indent=1))
        tmp.replace(Path(workdir) / ASSET_FILE)

    def model_kwargs(self, assets: SpeakerAssets) -> dict[str, Any]:
        return {"frontend_cfg": self.cfg.frontend, "num_speakers": len(assets.speakers)}

    def prepare_fn(self, source, assets, *, train: bool, model=None, objective=None):
        return SpeakerPreparer(source, assets, views=self.views if train else 1,
                               sample_rate=self.cfg.frontend.sample_rate,
                               max_samples=self.buckets[-1], seed=self.cfg.seed)

    def pad_values(self):
        return {"audio": 0.0}

    def collate(self, rows, batch_size: int):
        from jaxslu.data.pipeline import bucket_for

        train = bool(rows) and "views" in rows[0]
        clips = [r["views"] if train else [r["audio"]] for r in rows]
        v = len(clips[0]) if clips else (self.views if train else 1)
        longest = max((len(x) for c in clips for x in c), default=1)
        n = bucket_for(max(longest, 1), self.buckets)
        if n is None:  # prepare rejects these
            raise AssertionError("an utterance longer than the largest bucket reached collate")
        audio = np.zeros((batch_size, v, n), np.float32)
        lengths = np.ones((batch_size, v), np.int32)
        for k, c in enumerate(clips):
            for j, x in enumerate(c):
                audio[k, j, :len(x)] = x
                lengths[k, j] = max(len(x), 1)
        out = {"audio": audio if train else audio[:, 0], "audio_lengths":
               lengths if train else lengths[:, 0],
               "speaker": np.full((batch_size,), -1, np.int32),
               "index": np.full((batch_size,), -1, np.int32),
               "weight": np.zeros((batch_size,), np.float32)}
        for k, r in enumerate(rows):
            out["speaker"][k] = r["speaker"]
            out["index"][k] = r["index"]
            out["weight"][k] = 1.0
        return out

    def check(self, model, objective) -> None:
        names = set(objective.names)
        adversarial = {n for n in names & set(ADVERSARIAL_TERMS)
                       if dict(self.cfg.loss_options).get(n, {}).get("adversarial", True)}
        has_adv = getattr(model, "adversary", None) is not None
        if adversarial and not has_adv:
            raise ValueError(f"loss terms {sorted(adversarial)} need the model's adversary: set "
                             "model.adversary_hidden > 0")
        if has_adv and not adversarial:
            raise ValueError("model.adversary_hidden > 0 but the objective has no "
                             f"{' or '.join(ADVERSARIAL_TERMS)} term: the adversary would get "
                             "no gradient; set model.adversary_hidden=0")
        if has_adv:
            import re
            ok = any(g.get("maximize") and re.search(g["pattern"], "adversary/out/kernel")
                     for g in self.cfg.optim.groups)
            first = next((g for g in self.cfg.optim.groups
                          if re.search(g["pattern"], "adversary/out/kernel")), None)
            if not ok or not (first and first.get("maximize")):
                raise ValueError(
                    "the adversary must ascend the objective: add optim.groups=({'name': "
                    "'adversary', 'pattern': '^adversary/', 'maximize': True, "
                    "'learning_rate': 1e-3},) (the first group matching adversary/...)")
        if "pairwise_arw" in names and self.views < 2:
            raise ValueError("pairwise_arw needs same-speaker pairs in a batch: set "
                             "task_options.views >= 2")


# ------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EcapaConfig:
    name: str = "ecapa"
    channels: int = 128
    first_kernel: int = 5
    frame_stride: int = 1  # stride of the first convolution (2: 20 ms frames after it)
    kernel_size: int = 3
    dilations: tuple[int, ...] = (2, 3, 4)
    res2_scale: int = 4
    se_channels: int = 64
    mfa_channels: int = 384
    attention_channels: int = 64
    embed_dim: int = 192
    # "frontend": FrontendConfig.normalize decides (its "utterance" mode normalizes every mel
    # bin, which removes the long-term spectral envelope, much of a voice's identity);
    # "level": one mean and one standard deviation per utterance over all valid (frame, bin)
    # cells, removing loudness only (use with frontend normalize="none")
    feature_norm: str = "frontend"
    crop_seconds: float = 2.0  # random training crop (0: whole utterances)
    spec_augment: bool = False  # SpecAugment (frontend config) on the training crops
    adversary_hidden: int = 0  # 0: no adversary (baseline); > 0: ARW's adversary MLP width
    adversary_label_dim: int = 32
    kmeans_regions: int = 0  # K > 0: the adversary also sees each sample's k-means region
    kmeans_iterations: int = 5


class Conv1d(nnx.Module):
    """x [B, T, Cin] -> [B, T, Cout]: a 'same' dilated convolution over time; frames where
    `mask` is 0 are zeroed first (so padding never reaches a valid frame)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1, *,
                 rngs: nnx.Rngs, stride: int = 1):
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"convolution kernel {kernel}: use a positive odd size")
        if stride < 1:
            raise ValueError(f"convolution stride {stride} must be >= 1")
        self.kernel = param(rngs, nnx.initializers.lecun_normal(), (kernel, cin, cout),
                            (None, "conv_in", "conv_out"))
        self.bias = param(rngs, nnx.initializers.zeros, (cout,), ("conv_out",))
        self.size, self.dilation, self.stride = kernel, dilation, stride

    def __call__(self, x, mask):
        """Output frame t is centred on input frame t * stride: ceil(T / stride) frames.

        Written as a sum of `kernel` shifted matrix products (tap j reads input frame
        t * stride + (j - kernel // 2) * dilation, zero outside [0, T)) rather than
        lax.conv_general_dilated: the same values, and on CPU it compiles several times faster
        and runs faster for these small kernels."""
        x = x * mask
        w = self.kernel[...]
        t = x.shape[1]
        t_out = -(-t // self.stride)
        half = (self.size - 1) // 2 * self.dilation
        xp = jnp.pad(x, ((0, 0), (half, half + self.stride), (0, 0)))
        y = None
        for j in range(self.size):
            start = j * self.dilation
            tap = jax.lax.slice_in_dim(xp, start, start + (t_out - 1) * self.stride + 1,
                                       stride=self.stride, axis=1)
            part = jnp.einsum("btc,cd->btd", tap, w[j])
            y = part if y is None else y + part
        return y + self.bias[...]


class SERes2Block(nnx.Module):
    """1x1 conv -> Res2 (scale groups of dilated convs, each fed the previous group's output)
    -> 1x1 conv -> squeeze-excitation over valid frames; residual. ReLU then LayerNorm after
    each convolution."""

    def __init__(self, c: int, kernel: int, dilation: int, scale: int, se: int, *,
                 rngs: nnx.Rngs):
        if c % scale:
            raise ValueError(f"channels {c} must be divisible by res2_scale {scale}")
        w = c // scale
        self.scale = scale
        self.pre = Conv1d(c, c, 1, rngs=rngs)
        self.pre_norm = LayerNorm(c, rngs=rngs, axis="conv_out")
        self.convs = nnx.List([Conv1d(w, w, kernel, dilation, rngs=rngs)
                               for _ in range(scale - 1)])
        self.norms = nnx.List([LayerNorm(w, rngs=rngs, axis="conv_out")
                               for _ in range(scale - 1)])
        self.post = Conv1d(c, c, 1, rngs=rngs)
        self.post_norm = LayerNorm(c, rngs=rngs, axis="conv_out")
        self.se_down = Dense(c, se, rngs=rngs, axes=("conv_out", "mlp"))
        self.se_up = Dense(se, c, rngs=rngs, axes=("mlp", "conv_out"))

    def __call__(self, x, mask, count):
        h = self.pre_norm(jax.nn.relu(self.pre(x, mask)))
        chunks = jnp.split(h, self.scale, axis=-1)
        ys, prev = [chunks[0]], None
        for j in range(1, self.scale):
            inp = chunks[j] if prev is None else chunks[j] + prev
            prev = self.norms[j - 1](jax.nn.relu(self.convs[j - 1](inp, mask)))
            ys.append(prev)
        h = self.post_norm(jax.nn.relu(self.post(jnp.concatenate(ys, -1), mask)))
        s = jnp.sum(h * mask, axis=1) / count  # [B, C] mean over valid frames
        s = jax.nn.sigmoid(self.se_up(jax.nn.relu(self.se_down(s))))
        return x + h * s[:, None, :]


class Adversary(nnx.Module):
    """[normalized embedding, label embedding, (region features)] -> MLP -> logit [M]."""

    def __init__(self, embed_dim: int, num_speakers: int, hidden: int, label_dim: int,
                 regions: bool, *, rngs: nnx.Rngs):
        self.label = Embed(num_speakers, label_dim, rngs=rngs, axes=("vocab", None),
                           stddev=0.1)
        d_in = embed_dim + label_dim + (embed_dim + 2 if regions else 0)
        self.hidden = Dense(d_in, hidden, rngs=rngs, axes=(None, "mlp"))
        self.out = Dense(hidden, 1, rngs=rngs, axes=("mlp", None),
                         kernel_init=nnx.initializers.normal(0.01))

    def __call__(self, emb_n, labels, region_feats=None):
        parts = [emb_n, self.label(jnp.maximum(labels, 0))]
        if region_feats is not None:
            parts.append(region_feats)
        h = jax.nn.relu(self.hidden(jnp.concatenate(parts, -1)))
        return self.out(h)[:, 0]


def l2_normalize(x, axis=-1, eps=1e-12):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + eps)


def batch_kmeans(x_n, weight, k: int, iterations: int):
    """Spherical k-means of the rows of `x_n` [M, E] (unit norm) with weight > 0: farthest-point
    initialization from the first real row, `iterations` Lloyd steps. Returns (assignment [M],
    centroids [k, E] unit norm); padding rows are assigned too (their weight excludes them from
    the centroids)."""
    real = weight > 0
    first = jnp.argmax(real)
    cents = [x_n[first]]
    dist = jnp.where(real, 1.0 - x_n @ cents[0], -jnp.inf)
    for _ in range(k - 1):
        nxt = jnp.argmax(dist)
        cents.append(x_n[nxt])
        dist = jnp.minimum(dist, jnp.where(real, 1.0 - x_n @ x_n[nxt], -jnp.inf))
    c = jnp.stack(cents)
    for _ in range(iterations):
        assign = jnp.argmax(x_n @ c.T, axis=-1)
        onehot = jax.nn.one_hot(assign, k) * real[:, None]
        sums = onehot.T @ x_n
        norm = jnp.linalg.norm(sums, axis=-1, keepdims=True)
        c = jnp.where(norm > 1e-6, sums / jnp.maximum(norm, 1e-6), c)
    return jnp.argmax(x_n @ c.T, axis=-1), c


@MODELS.register("ecapa", config=EcapaConfig)
class Ecapa(nnx.Module):
    def __init__(self, cfg: EcapaConfig, *, frontend_cfg: FrontendConfig, num_speakers: int,
                 rngs: nnx.Rngs):
        if not cfg.dilations:
            raise ValueError("EcapaConfig.dilations must name at least one block")
        if cfg.feature_norm not in ("frontend", "level"):
            raise ValueError(f"EcapaConfig.feature_norm={cfg.feature_norm!r}: use 'frontend' or "
                             "'level'")
        if num_speakers < 2:
            raise ValueError(f"num_speakers={num_speakers}: need at least 2 training speakers")
        self.cfg, self.frontend_cfg = cfg, frontend_cfg
        c, m = cfg.channels, frontend_cfg.num_mels
        self.conv0 = Conv1d(m, c, cfg.first_kernel, rngs=rngs, stride=cfg.frame_stride)
        self.norm0 = LayerNorm(c, rngs=rngs, axis="conv_out")
        self.blocks = nnx.List([SERes2Block(c, cfg.kernel_size, d, cfg.res2_scale,
                                            cfg.se_channels, rngs=rngs) for d in cfg.dilations])
        self.mfa = Conv1d(c * len(cfg.dilations), cfg.mfa_channels, 1, rngs=rngs)
        self.mfa_norm = LayerNorm(cfg.mfa_channels, rngs=rngs, axis="conv_out")
        a = cfg.attention_channels
        self.att_local = Dense(cfg.mfa_channels, a, rngs=rngs, axes=("conv_out", "mlp"))
        self.att_global = Dense(2 * cfg.mfa_channels, a, rngs=rngs, axes=(None, "mlp"),
                                use_bias=False)
        self.att_out = Dense(a, cfg.mfa_channels, rngs=rngs, axes=("mlp", "conv_out"))
        self.pool_norm = LayerNorm(2 * cfg.mfa_channels, rngs=rngs, axis=None)
        self.embed_proj = Dense(2 * cfg.mfa_channels, cfg.embed_dim, rngs=rngs,
                                axes=(None, "embed"))
        self.speaker_weight = param(rngs, nnx.initializers.normal(1.0),
                                    (cfg.embed_dim, num_speakers), ("embed", "vocab"))
        self.adversary = (Adversary(cfg.embed_dim, num_speakers, cfg.adversary_hidden,
                                    cfg.adversary_label_dim, cfg.kmeans_regions > 0, rngs=rngs)
                          if cfg.adversary_hidden > 0 else None)

    # -- embedding ---------------------------------------------------------------------------

    def crop(self, audio, lengths, key):
        """A random window of crop_seconds per row (rows shorter keep all their samples)."""
        n = int(round(self.cfg.crop_seconds * self.frontend_cfg.sample_rate))
        if n <= 0 or audio.shape[1] <= n:
            return audio, lengths
        room = jnp.maximum(lengths - n, 0)
        off = jnp.floor(jax.random.uniform(key, lengths.shape) * (room + 1)).astype(jnp.int32)
        off = jnp.minimum(off, room)
        audio = jax.vmap(lambda a, o: jax.lax.dynamic_slice(a, (o,), (n,)))(audio, off)
        return audio, jnp.minimum(lengths, n)

    def features(self, audio, lengths, *, train: bool = False, rngs=None):
        from jaxslu.audio.augment import spec_augment
        from jaxslu.audio.frontend import log_mel, normalize_utterance

        feats, frames = log_mel(audio, lengths, self.frontend_cfg)
        if self.cfg.feature_norm == "level":
            valid = length_mask(jnp.maximum(frames, 1), feats.shape[1])[..., None]
            cells = jnp.maximum(frames, 1).astype(jnp.float32)[:, None, None] * feats.shape[2]
            mean = jnp.sum(jnp.where(valid, feats, 0.0), (1, 2), keepdims=True) / cells
            var = jnp.sum(jnp.where(valid, jnp.square(feats - mean), 0.0), (1, 2),
                          keepdims=True) / cells
            feats = jnp.where(valid, (feats - mean) * jax.lax.rsqrt(var + 1e-5), 0.0)
        elif self.frontend_cfg.normalize == "utterance":
            feats = normalize_utterance(feats, frames)
        if train and rngs is not None and self.cfg.spec_augment:
            feats = spec_augment(stream_key(rngs, "augment"), feats, frames, self.frontend_cfg)
        return feats, frames

    def embed(self, audio, lengths, *, train: bool = False, rngs=None):
        """audio [B, N], lengths [B] -> embedding [B, embed_dim] (not normalized)."""
        if audio.ndim != 2:
            raise ValueError(f"embed expects audio [batch, samples], got shape {audio.shape}")
        if train and rngs is not None and self.cfg.crop_seconds > 0:
            audio, lengths = self.crop(audio, lengths, stream_key(rngs, "augment"))
        feats, frames = self.features(audio, lengths, train=train, rngs=rngs)
        frames = jnp.maximum(frames, 1)
        mask = length_mask(frames, feats.shape[1])[..., None].astype(jnp.float32)
        h = self.conv0(feats, mask)
        st = self.cfg.frame_stride
        frames = (frames + st - 1) // st  # output frames centred on valid input frames
        mask = length_mask(frames, h.shape[1])[..., None].astype(jnp.float32)
        count = frames.astype(jnp.float32)[:, None]
        h = self.norm0(jax.nn.relu(h))
        outs = []
        for block in self.blocks:
            h = block(h, mask, count)
            outs.append(h)
        h = self.mfa_norm(jax.nn.relu(self.mfa(jnp.concatenate(outs, -1), mask)))
        # attentive statistics pooling with global context, over valid frames only
        mean = jnp.sum(h * mask, 1) / count
        std = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(h - mean[:, None]) * mask, 1) / count,
                                   1e-5))
        ctx = self.att_global(jnp.concatenate([mean, std], -1))[:, None, :]
        logits = self.att_out(jnp.tanh(self.att_local(h) + ctx))
        logits = jnp.where(mask > 0, logits, -1e9)
        alpha = jax.nn.softmax(logits, axis=1) * mask
        mu = jnp.sum(alpha * h, 1)
        sg = jnp.sqrt(jnp.maximum(jnp.sum(alpha * jnp.square(h), 1) - jnp.square(mu), 1e-5))
        pooled = self.pool_norm(jnp.concatenate([mu, sg], -1))
        return self.embed_proj(pooled)

    # -- training outputs --------------------------------------------------------------------

    def region_features(self, emb_n, weight):
        assign, cents = batch_kmeans(emb_n, weight, self.cfg.kmeans_regions,
                                     self.cfg.kmeans_iterations)
        c_i = cents[assign]
        cos = jnp.sum(emb_n * c_i, -1, keepdims=True)
        real = (weight > 0).astype(jnp.float32)
        share = (jax.nn.one_hot(assign, self.cfg.kmeans_regions) * real[:, None]).sum(0)
        share = share / jnp.maximum(real.sum(), 1.0)
        return jnp.concatenate([c_i, cos, share[assign][:, None]], -1), assign

    def __call__(self, batch, *, train: bool = False, rngs=None):
        audio, lengths = batch["audio"], batch["audio_lengths"]
        views = 1
        if audio.ndim == 3:
            b, views, n = audio.shape
            audio, lengths = audio.reshape(b * views, n), lengths.reshape(b * views)
        emb = self.embed(audio, lengths, train=train, rngs=rngs)
        out = {"embedding": emb, "speaker_weight": self.speaker_weight[...]}
        if "speaker" in batch:
            labels = jnp.repeat(batch["speaker"], views)
            weights = jnp.repeat(batch["weight"].astype(jnp.float32), views)
            out["labels"], out["weights"] = labels, weights
            if self.adversary is not None:
                emb_n = jax.lax.stop_gradient(l2_normalize(emb))
                region = None
                if self.cfg.kmeans_regions > 0:
                    region, assign = self.region_features(emb_n, weights)
                    region = jax.lax.stop_gradient(region)
                    out["regions"] = assign
                out["adversary_logits"] = self.adversary(emb_n, labels, region)
        return out


# ------------------------------------------------------------------------------------------
# Loss terms
# ------------------------------------------------------------------------------------------


def _labels_weights(batch, outputs):
    if "labels" in outputs:
        labels, weights = outputs["labels"], outputs["weights"]
    else:
        labels, weights = batch["speaker"], batch["weight"]
    weights = weights.astype(jnp.float32) * (labels >= 0)
    return labels, weights


def aam_per_example(embedding, class_weight, labels, *, margin: float, scale: float):
    """Per-example additive angular margin softmax loss (ArcFace) and correctness [M].

    cos = <e/|e|, w_c/|w_c|>; the target logit is s cos(theta_y + m) where theta_y + m <= pi,
    else s (cos theta_y - m sin(m)) (ArcFace's monotone continuation; here
    cos(pi - m) is the switch point); other logits s cos. Computed in float32 whatever the
    input dtype; labels < 0 are treated as class 0 (weight them 0)."""
    e_n = l2_normalize(embedding)
    w_n = l2_normalize(class_weight, axis=0)
    cos = e_n @ w_n  # [M, S]
    y = jnp.maximum(labels, 0)
    cos_y = jnp.clip(jnp.take_along_axis(cos, y[:, None], -1)[:, 0], -1.0 + 1e-6, 1.0 - 1e-6)
    sin_y = jnp.sqrt(1.0 - cos_y * cos_y)
    phi = cos_y * math.cos(margin) - sin_y * math.sin(margin)
    phi = jnp.where(cos_y > math.cos(math.pi - margin), phi,
                    cos_y - math.sin(math.pi - margin) * margin)
    onehot = jax.nn.one_hot(y, cos.shape[-1], dtype=jnp.float32)
    logits = scale * jnp.where(onehot > 0, phi[:, None], cos)
    loss = jax.nn.logsumexp(logits, -1) - scale * phi
    correct = (jnp.argmax(cos, -1) == y).astype(jnp.float32)
    return loss, correct


def _check_options(margin, scale):
    if not 0.0 <= margin < math.pi / 2:
        raise ValueError(f"AAM margin must lie in [0, pi/2), got {margin!r}")
    if scale <= 0:
        raise ValueError(f"AAM scale must be > 0, got {scale!r}")


@LOSSES.register("aam_softmax")
def aam_softmax(*, margin: float = 0.2, scale: float = 30.0):
    """Additive angular margin softmax over the training speakers (`outputs["embedding"]`,
    `outputs["speaker_weight"]`), examples weighted by their batch weight (padding 0)."""
    _check_options(margin, scale)

    def term(batch, outputs, params):
        labels, w = _labels_weights(batch, outputs)
        loss, correct = aam_per_example(outputs["embedding"], outputs["speaker_weight"], labels,
                                        margin=margin, scale=scale)
        n = jnp.maximum(w.sum(), 1e-6)
        return jnp.sum(jnp.where(w > 0, loss, 0.0) * w) / n, {
            "accuracy": jnp.sum(correct * w) / n}

    return term


def arw_weights(adversary_logits, weight):
    """lambda_i = 1 + n a_i / sum_j a_j (a = sigmoid(logits), sums over real rows, n their
    number); padding rows (weight 0) get 0. sum(lambda) = 2n."""
    w = (weight > 0).astype(jnp.float32)
    a = jax.nn.sigmoid(adversary_logits.astype(jnp.float32)) * w
    n = w.sum()
    return w * (1.0 + n * a / jnp.maximum(a.sum(), 1e-12))


def _adversary_logits(outputs, term: str):
    if "adversary_logits" not in outputs:
        raise ValueError(f"loss term {term!r} needs outputs['adversary_logits']: set "
                         "model.adversary_hidden > 0 (and the batch must carry speaker labels)")
    return outputs["adversary_logits"]


def _lambda_metrics(lam, w):
    real = w > 0
    n = jnp.maximum(real.sum(), 1)
    mean = jnp.sum(lam) / n
    return {"lambda_max": jnp.max(jnp.where(real, lam, 0.0)),
            "lambda_min": jnp.min(jnp.where(real, lam, jnp.inf)),
            "lambda_std": jnp.sqrt(jnp.sum(jnp.where(real, (lam - mean) ** 2, 0.0)) / n)}


@LOSSES.register("arw")
def arw(*, margin: float = 0.2, scale: float = 30.0):
    """Adversarially reweighted AAM-softmax: (1/n) sum_i lambda_i l_i, lambda from the
    adversary (`arw_weights`); the learner descends it, the adversary group (maximize) ascends
    it."""
    _check_options(margin, scale)

    def term(batch, outputs, params):
        labels, w = _labels_weights(batch, outputs)
        loss, correct = aam_per_example(outputs["embedding"], outputs["speaker_weight"], labels,
                                        margin=margin, scale=scale)
        loss = jnp.where(w > 0, loss, 0.0)
        lam = arw_weights(_adversary_logits(outputs, "arw"), w)
        n = jnp.maximum((w > 0).sum(), 1).astype(jnp.float32)
        value = jnp.sum(lam * loss) / n
        return value, {"aam": jnp.sum(loss * w) / n, "accuracy": jnp.sum(correct * w) / n,
                       **_lambda_metrics(lam, w)}

    return term


def pair_losses(embedding, labels, weight, *, scale: float, bias: float):
    """(cos [M, M], pair loss [M, M], target mask, non-target mask): pairs i < j of real rows;
    target = same label. Loss softplus(-s (cos - b)) for targets, softplus(s (cos - b))
    otherwise."""
    e_n = l2_normalize(embedding)
    cos = e_n @ e_n.T
    m = cos.shape[0]
    real = weight > 0
    upper = jnp.triu(jnp.ones((m, m), bool), 1) & real[:, None] & real[None, :]
    same = labels[:, None] == labels[None, :]
    tar, non = upper & same, upper & ~same
    z = scale * (cos - bias)
    loss = jnp.where(same, jax.nn.softplus(-z), jax.nn.softplus(z))
    return cos, loss, tar, non


@LOSSES.register("pairwise_arw")
def pairwise_arw(*, scale: float = 10.0, bias: float = 0.4, adversarial: bool = True):
    """Pairwise (verification-style) loss on the batch's pairs, each pair weighted by
    lambda_i + lambda_j (`arw_weights` of the adversary, whose input includes each sample's
    k-means region); target and non-target pairs averaged separately and added.
    `adversarial=False`: every lambda 1 (the unweighted pairwise loss, an ablation)."""
    if scale <= 0:
        raise ValueError(f"pairwise_arw scale must be > 0, got {scale!r}")

    def term(batch, outputs, params):
        labels, w = _labels_weights(batch, outputs)
        cos, loss, tar, non = pair_losses(outputs["embedding"], labels, w, scale=scale,
                                          bias=bias)
        if adversarial:
            lam = arw_weights(_adversary_logits(outputs, "pairwise_arw"), w)
        else:
            lam = (w > 0).astype(jnp.float32)
        pw = lam[:, None] + lam[None, :]
        n_t = jnp.maximum(tar.sum(), 1).astype(jnp.float32)
        n_n = jnp.maximum(non.sum(), 1).astype(jnp.float32)
        value = (jnp.sum(jnp.where(tar, pw * loss, 0.0)) / n_t
                 + jnp.sum(jnp.where(non, pw * loss, 0.0)) / n_n)
        metrics = {"target_cos": jnp.sum(jnp.where(tar, cos, 0.0)) / n_t,
                   "nontarget_cos": jnp.sum(jnp.where(non, cos, 0.0)) / n_n,
                   "target_pairs": tar.sum().astype(jnp.float32)}
        if adversarial:
            metrics.update(_lambda_metrics(lam, w))
        return value, metrics

    return term


# ------------------------------------------------------------------------------------------
# Evaluator
# ------------------------------------------------------------------------------------------


def cohort_report(scores: np.ndarray, labels: np.ndarray, cells: Sequence[dict],
                  keys: Sequence[str] = ("gender", "accent")) -> dict[str, Any]:
    """Metrics overall, per cohort value of each key, the gender gap and the accent spread."""
    out = sv_metrics.verification_metrics(scores, labels)
    per: dict[str, dict] = {}
    for key in keys:
        values = sorted({c[key] for c in cells if key in c})
        per[key] = {}
        for v in values:
            sel = np.asarray([c.get(key) == v for c in cells])
            per[key][v] = sv_metrics.verification_metrics(scores[sel], labels[sel])
    out["per_cohort"] = per
    g = per.get("gender", {})
    if "female" in g and "male" in g:
        f, m = g["female"]["eer"], g["male"]["eer"]
        mean = (f + m) / 2
        out["gender_gap"] = {"female_eer": f, "male_eer": m, "female_minus_male": f - m,
                             "absolute": abs(f - m),
                             "relative": abs(f - m) / mean if mean > 0 else 0.0}
    acc = per.get("accent", {})
    if acc:
        eers = {k: v["eer"] for k, v in acc.items()}
        out["accent_spread"] = {"max_minus_min": sv_metrics.spread(list(eers.values())),
                                "worst": max(eers, key=eers.get), "best": min(eers, key=eers.get),
                                "std": float(np.std(list(eers.values())))}
    return out


@EVALUATORS.register("speaker_verification")
class SpeakerVerificationEvaluator:
    def __init__(self, run: LoadedRun):
        self.run = run

        def fn(model, batch):
            return {"embedding": l2_normalize(model.embed(batch["audio"],
                                                          batch["audio_lengths"]))}

        self._fn = fn

    def embeddings(self, source) -> np.ndarray:
        emb = None
        for batch in self.run.eval_batches(source):
            out, index, weight = self.run.apply(self._fn, batch)
            e = np.asarray(out["embedding"], np.float32)
            if emb is None:
                emb = np.zeros((len(source), e.shape[1]), np.float32)
            for b in np.flatnonzero(weight > 0):
                emb[int(index[b])] = e[b]
        return emb

    def evaluate(self, split: str):
        task = self.run.task
        source = task.open_source(split)
        meta = [source.metadata(i) for i in range(len(source))]
        fsdd = split.startswith("fsdd")
        keys = () if fsdd else ("gender", "accent")
        per_cell = task.fsdd_trials if fsdd else task.trials_per_cell
        trials = SP.make_trials(meta, per_cell=per_cell, seed=task.trial_seed, cell_keys=keys,
                                what=f"split {split!r}")
        emb = self.embeddings(source)
        a = np.asarray([t["a"] for t in trials])
        b = np.asarray([t["b"] for t in trials])
        scores = np.sum(emb[a].astype(np.float64) * emb[b], -1)
        labels = np.asarray([t["target"] for t in trials], np.int64)
        cells = [t["cell"] for t in trials]
        ids = [m["id"] for m in meta]
        report = {"num_utterances": len(meta),
                  "num_speakers": len({m["speaker"] for m in meta}),
                  **cohort_report(scores, labels, cells, keys),
                  "trial_list": {"per_cell": per_cell, "seed": task.trial_seed,
                                 "cells": len({tuple(sorted(c.items())) for c in cells}),
                                 "cell_keys": list(keys),
                                 "sha256": SP.trials_digest(trials, ids)}}
        records = [{"enroll": ids[t["a"]], "test": ids[t["b"]],
                    "enroll_speaker": meta[t["a"]]["speaker"],
                    "test_speaker": meta[t["b"]]["speaker"], "target": bool(t["target"]),
                    "score": float(s), **t["cell"]} for t, s in zip(trials, scores)]
        return report, records
