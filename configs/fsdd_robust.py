"""Speaker-robust FSDD: the fsdd_slu transducer trained with augmentation and synthetic voices.

Everything on (the default): speed perturbation 0.9/1.0/1.1, vocal-tract-length perturbation
(alpha in [0.9, 1.1]), synthetic reverberation (30% of examples, RT60 0.15-0.6 s), coloured
noise (50%, SNR 5-30 dB), stronger SpecAugment (2 frequency masks of up to 15 mel bins, 4 time
masks of up to 5% of the length) and eSpeak NG digits over many voices, variants, rates and
pitches mixed in at 1 synthetic per real training recording. Leave-one-speaker-out:

    jaxslu train --config configs/fsdd_robust.py --workdir runs/fsdd_loso/all/george --eval \
        --set data.options.holdout_speaker=george

Variants: "default" (all on), the ablations "no_speed", "no_vtlp", "no_reverb", "no_noise",
"no_specaug" (the base SpecAugment of fsdd_slu), "no_synthetic", and "none" (fsdd_slu as is);
the additions "plus_channel" (microphone simulation: high-pass + spectral tilt on half the
examples) and "plus_channel_no_synthetic";
"ci" / "tiny" shrink the model and the steps. `scripts/fsdd_loso.py` runs the whole table.
"""
import dataclasses
import importlib.util
from pathlib import Path

from jaxslu.config import WaveAugmentConfig

_spec = importlib.util.spec_from_file_location("fsdd_slu", Path(__file__).with_name("fsdd_slu.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

AUGMENT = WaveAugmentConfig(speeds=(0.9, 1.0, 1.1), reverb_prob=0.3, rt60_s=(0.15, 0.6),
                            drr_db=(0.0, 12.0), noise_prob=0.5, noise_snr_db=(5.0, 30.0),
                            noise_beta=(0.0, 2.0))
VTLP = 0.1
SYNTHETIC_RATIO = 1.0
ABLATIONS = ("no_speed", "no_vtlp", "no_reverb", "no_noise", "no_specaug", "no_synthetic")
# Additions on top of the default: channel simulation (high-pass + tilt, half the examples),
# also without the synthetic voices.
ADDITIONS = ("plus_channel", "plus_channel_no_synthetic")
CHANNEL_PROB = 0.5


def get_config(variant: str = "default"):
    size = variant if variant in ("ci", "tiny") else "default"
    ablation = variant
    if "/" in variant:  # e.g. "ci/no_speed": an ablation at the ci size
        size, ablation = variant.split("/", 1)
    elif variant in ("ci", "tiny"):
        ablation = "default"
    cfg = _base.get_config(size)
    if ablation == "none":
        return dataclasses.replace(cfg, name="fsdd_robust_none")
    if ablation != "default" and ablation not in ABLATIONS + ADDITIONS:
        raise ValueError(f"unknown variant {variant!r} of fsdd_robust: use 'default', 'none', "
                         f"one of {ABLATIONS + ADDITIONS}, 'ci', 'tiny', or "
                         "'<ci|tiny>/<variant>'")
    augment = AUGMENT
    if ablation.startswith("plus_channel"):
        augment = dataclasses.replace(augment, channel_prob=CHANNEL_PROB)
    if ablation == "no_speed":
        augment = dataclasses.replace(augment, speeds=())
    elif ablation == "no_reverb":
        augment = dataclasses.replace(augment, reverb_prob=0.0)
    elif ablation == "no_noise":
        augment = dataclasses.replace(augment, noise_prob=0.0)
    frontend = cfg.frontend
    if ablation != "no_specaug":
        frontend = dataclasses.replace(frontend, freq_masks=2, freq_mask_width=15, time_masks=4,
                                       time_mask_ratio=0.05)
    frontend = dataclasses.replace(frontend, vtlp=0.0 if ablation == "no_vtlp" else VTLP)
    options = dict(cfg.data.options)
    if not ablation.endswith("no_synthetic"):
        options["synthetic_ratio"] = SYNTHETIC_RATIO
    return dataclasses.replace(
        cfg, name="fsdd_robust" + ("" if ablation == "default" else f"_{ablation}"),
        data=dataclasses.replace(cfg.data, options=options, augment=augment),
        frontend=frontend)
