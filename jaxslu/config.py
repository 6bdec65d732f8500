"""Typed experiment configs: frozen dataclasses, command-line overrides, and round-trip to JSON.

A config file is plain Python with a `get_config()` returning an `ExperimentConfig` (tiny variants
for tests come from `get_config("tiny")`). Any field can be overridden from the command line with
a dotted path, `--set model.encoder.num_layers=4`; dict-valued fields (such as `loss_options`)
accept new keys, dataclass fields do not (a typo is an error that lists the valid keys).

The objective is one line: `loss="rnnt + 0.3*intent_ce + 0.5*slot_ce"`; per-term options go in
`loss_options={"rnnt": {"implementation": "xla", "fused": True}}`.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A config could not be loaded or an override does not fit it."""


# --------------------------------------------------------------------------------------------
# The experiment config. Model configs are dataclasses registered with their model (see
# jaxslu.registry.MODELS); they carry their registry key in a `name` field.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WaveAugmentConfig:
    """Waveform augmentation of training examples (host side; see jaxslu.audio.perturb).

    Applied in this order, each example independently, with randomness drawn from the run's seed
    and the example's position in the training stream (deterministic and resumable):
    speed perturbation, synthetic reverberation, channel filtering, additive noise. Everything
    off by default.
    """

    # Speed perturbation (tempo and pitch, as Kaldi/ESPnet's sox "speed"): one factor drawn
    # uniformly from this tuple per example, e.g. (0.9, 1.0, 1.1); () = off.
    speeds: tuple[float, ...] = ()
    # Synthetic reverberation: probability per example, RT60 range (s), direct-to-reverberant
    # ratio range (dB).
    reverb_prob: float = 0.0
    rt60_s: tuple[float, float] = (0.15, 0.6)
    drr_db: tuple[float, float] = (0.0, 12.0)
    # Additive coloured noise: probability per example, SNR range (dB), and the range of the
    # spectral exponent beta of the noise's 1/f^beta power spectrum (0 white, 1 pink, 2 brown).
    noise_prob: float = 0.0
    noise_snr_db: tuple[float, float] = (5.0, 30.0)
    noise_beta: tuple[float, float] = (0.0, 2.0)
    # Channel (microphone) simulation: probability per example; a 2nd-order Butterworth
    # high-pass with its cutoff log-uniform in highpass_hz, then a first-order spectral tilt
    # y[n] = x[n] - a x[n-1] with a uniform in tilt (a > 0 brightens, a < 0 darkens).
    channel_prob: float = 0.0
    highpass_hz: tuple[float, float] = (20.0, 600.0)
    tilt: tuple[float, float] = (-0.5, 0.9)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to read and how to batch it."""

    dataset: str = "fsdd"  # key in jaxslu.registry.DATASETS
    options: dict = dataclasses.field(default_factory=dict)  # kwargs of the dataset factory
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("test",)
    batch_size: int = 32  # global batch, split across processes and the data axes of the mesh
    eval_batch_size: int = 64
    # Length buckets: audio is padded to the smallest bucket (seconds) that holds it, so XLA
    # compiles one program per bucket. Longer audio is an error (or skipped, see below).
    bucket_seconds: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    # Labels (tokens) are padded to the smallest of these that fits.
    label_buckets: tuple[int, ...] = (8, 16, 32, 64)
    skip_bad_examples: bool = False  # True: skip and count bad examples instead of raising
    num_threads: int = 2  # grain read threads per host
    prefetch: int = 2
    cache_dir: str = ""  # where synthesized corpora are cached; "" -> ~/.cache/jaxslu
    # Oversampling (training only): {"key": <record field or meta key, e.g. "speaker", "accent">,
    # "weights": {<value>: <weight>}, "default": 1.0}. Example i appears w_i times per pass of
    # the training stream (fractions by seeded stochastic rounding, fixed for the run); weight 0
    # drops an example. See jaxslu.data.pipeline.oversample_indices.
    sample_weights: dict = dataclasses.field(default_factory=dict)
    augment: WaveAugmentConfig = WaveAugmentConfig()  # waveform augmentation (training only)


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 16000
    num_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    fmin: float = 20.0
    fmax: float = 7600.0
    normalize: str = "utterance"  # "utterance" mean/variance normalization, or "none"
    # SpecAugment (training only)
    freq_masks: int = 2
    freq_mask_width: int = 15
    time_masks: int = 2
    time_mask_ratio: float = 0.05  # max width of each time mask as a fraction of the length
    # Vocal-tract-length perturbation (training only): the filterbank reads the spectrum on a
    # frequency axis warped by alpha ~ U(1 - vtlp, 1 + vtlp) per utterance (Jaitly & Hinton
    # 2013; see jaxslu.audio.frontend.vtlp_warp); 0 = off.
    vtlp: float = 0.0


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    kind: str = "unigram"  # sentencepiece "unigram" or "bpe", or "char"
    vocab_size: int = 64
    lowercase: bool = True


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    decay: str = "cosine"  # "cosine", "linear" or "constant" after warm-up
    end_learning_rate_ratio: float = 0.05
    weight_decay: float = 1e-2
    b1: float = 0.9
    b2: float = 0.98
    clip_norm: float = 1.0
    # Parameter groups with their own optimizer settings, matched in order by a regular
    # expression on the parameter path ("encoder/layers/0/attn/query/kernel"); unmatched
    # parameters use the settings above. Each group is a dict with "name", "pattern" and any of
    # "learning_rate", "weight_decay", "b1", "b2", "frozen" (no update) and "maximize" (gradient
    # *ascent* on the objective: the adversary of a min-max game). Example:
    #   groups=({"name": "adversary", "pattern": "^adversary/", "maximize": True,
    #            "learning_rate": 1e-3},)
    groups: tuple = ()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    # What a non-finite loss does: "stop" raises after restoring nothing (the last good
    # checkpoint stays as it is); "skip" drops that update and counts it.
    on_nan: str = "stop"
    max_skipped_updates: int = 10
    # Warm start: workdir of another run whose latest parameters (matched by path and shape) and
    # tokenizer / label vocabularies a fresh run starts from (jaxslu.train.warm_start).
    init_from: str | None = None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh and logical-axis rules. -1 in a mesh axis means "all remaining devices"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # logical axis name -> mesh axis (or None: replicated). Parameters carry logical names in
    # their `logical_axes` metadata; a dimension not divisible by its mesh axis is replicated.
    rules: tuple[tuple[str, str | None], ...] = (
        ("batch", "data"),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("vocab", "tensor"),
        ("conv_in", None),
        ("conv_out", "tensor"),
        ("lstm_gates", "tensor"),
    )
    distributed: bool = False  # call jax.distributed.initialize() (multi-host)
    coordinator_address: str = ""  # "" -> auto-detected by jax on TPU/SLURM etc.
    num_processes: int = 0
    process_id: int = -1


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    decode: str = "greedy"  # "greedy" or "beam"
    beam_size: int = 4
    max_symbols_per_frame: int = 3
    # Evaluator (jaxslu.registry.EVALUATORS); "" -> the task's own.
    evaluator: str = ""
    # Per-example records (predictions_<split>.jsonl) next to each report.
    write_predictions: bool = True
    # Evaluator-specific options (e.g. the NLU evaluator's out-of-scope threshold selection).
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    model: Any  # a registered model config dataclass (has a `name` field)
    # The task (jaxslu.registry.TASKS): owns featurization/collation, assets (tokenizer, label
    # vocabularies), the model's constructor arguments, data checks and the default evaluator.
    task: str = "transducer_slu"
    task_options: dict = dataclasses.field(default_factory=dict)
    loss: str = "rnnt"  # the objective: "rnnt + 0.3*intent_ce + 0.5*slot_ce"
    loss_options: dict = dataclasses.field(default_factory=dict)  # term name -> kwargs
    data: DataConfig = DataConfig()
    frontend: FrontendConfig = FrontendConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    eval: EvalConfig = EvalConfig()
    seed: int = 0


# --------------------------------------------------------------------------------------------
# Loading and overrides
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path, variant: str | None = None,
                overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """Load `get_config(variant)` from a Python config file and apply `key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass one of the files in "
                          "configs/ (e.g. configs/fsdd_slu.py)")
    spec = importlib.util.spec_from_file_location(f"jaxslu_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} has no get_config() function")
    cfg = module.get_config(variant) if variant else module.get_config()
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Any, overrides: typing.Iterable[str]) -> Any:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value "
                              "(e.g. --set model.encoder.num_layers=4)")
        key, value = item.split("=", 1)
        cfg = override(cfg, key.strip(), value.strip())
    return cfg


def override(cfg: Any, dotted: str, raw: str | Any, _full: str | None = None) -> Any:
    """Return a copy of `cfg` with the field at `dotted` set to `raw` (parsed to the field's type)."""
    full = _full or dotted
    head, _, rest = dotted.partition(".")
    if dataclasses.is_dataclass(cfg):
        names = [f.name for f in dataclasses.fields(cfg)]
        if head not in names:
            raise ConfigError(f"unknown config key {head!r} in {full!r} ({type(cfg).__name__}); "
                              f"valid keys here: {names}")
        current = getattr(cfg, head)
        if rest:
            new = override(current, rest, raw, full)
        else:
            hint = typing.get_type_hints(type(cfg)).get(head)
            new = _parse_value(raw, current, hint, full)
        return dataclasses.replace(cfg, **{head: new})
    if isinstance(cfg, Mapping):
        current = cfg.get(head)
        if rest:
            new = override(current if current is not None else {}, rest, raw, full)
        else:
            new = _parse_value(raw, current, None, full)
        out = dict(cfg)
        out[head] = new
        return out
    raise ConfigError(f"cannot set {full!r}: the value there is a {type(cfg).__name__}, "
                      "not a config section")


def _parse_value(raw: Any, current: Any, hint: Any, key: str) -> Any:
    if not isinstance(raw, str):
        return raw
    target = type(current) if current is not None else _type_from_hint(hint)
    if dataclasses.is_dataclass(target):
        raise ConfigError(f"{key!r} is a config section; set its fields, e.g. {key}.<field>=...")
    try:
        if target is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if target is int:
            return int(raw)
        if target is float:
            return float(raw)
        if target is str:
            return raw
        if target in (tuple, list, dict):
            value = ast.literal_eval(raw)
            if target is tuple and isinstance(value, list):
                value = tuple(value)
            if not isinstance(value, target):
                raise ValueError(raw)
            return value
        # Unknown or None-typed: a Python literal if it parses, else the string itself.
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"cannot parse {raw!r} for {key!r} (expected {target.__name__})") from e


def _type_from_hint(hint: Any) -> Any:
    if hint is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _type_from_hint(args[0]) if len(args) == 1 else None
    if origin is not None:
        return origin
    return hint if isinstance(hint, type) else None


# --------------------------------------------------------------------------------------------
# Serialization: a run writes its resolved config; eval/transcribe read it back.
# --------------------------------------------------------------------------------------------

_TYPE_KEY = "__dataclass__"


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        out = {_TYPE_KEY: f"{type(cfg).__module__}:{type(cfg).__qualname__}"}
        for f in dataclasses.fields(cfg):
            out[f.name] = to_dict(getattr(cfg, f.name))
        return out
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    return cfg


def from_dict(data: Any) -> Any:
    if isinstance(data, Mapping) and _TYPE_KEY in data:
        module, qualname = data[_TYPE_KEY].split(":")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                kwargs[f.name] = _coerce(from_dict(data[f.name]), hints.get(f.name))
        return cls(**kwargs)
    if isinstance(data, Mapping):
        return {k: from_dict(v) for k, v in data.items()}
    if isinstance(data, list):
        return [from_dict(v) for v in data]
    return data


def _coerce(value: Any, hint: Any) -> Any:
    """JSON has no tuples: turn lists back into tuples where the field is a tuple."""
    if isinstance(value, list):
        if _type_from_hint(hint) is tuple or hint is None or _type_from_hint(hint) is None:
            return tuple(_coerce(v, None) for v in value)
    return value


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_config(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no resolved config at {str(path)!r}: is this a jaxslu workdir "
                          "written by `jaxslu train`?")
    return from_dict(json.loads(path.read_text()))
