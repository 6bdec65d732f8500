"""Audio: waveform I/O, the JAX log-mel frontend, SpecAugment, eSpeak NG synthesis, spoken SLURP,
the spoken SLU corpus (unseen test speakers), synthetic spoken digits.

Importing this package loads no native speech library; eSpeak NG is loaded on the first
`synthesize` call.
"""
from jaxslu.audio.augment import spec_augment
from jaxslu.audio.corpus import build_spoken_slurp, load_slurp_devel, normalize_tokens, split_of
from jaxslu.audio.digits import build_synthetic_digits
from jaxslu.audio.spoken_nlu import build_spoken_nlu
from jaxslu.audio.frontend import (
    compute_features,
    fft_size,
    hop_samples,
    log_mel,
    mel_filterbank,
    normalize_utterance,
    num_frames,
    window_samples,
)
from jaxslu.audio.io import AudioError, load_audio, load_resampled, resample, write_flac
from jaxslu.audio.synth import (
    ACCENT_REGIONS,
    VOICES,
    Speaker,
    SynthesisError,
    check_voice,
    espeak_version,
    make_speakers,
    synthesize,
)

__all__ = [
    "ACCENT_REGIONS", "AudioError", "Speaker", "SynthesisError", "VOICES", "build_spoken_nlu",
    "build_spoken_slurp",
    "build_synthetic_digits",
    "check_voice", "compute_features", "espeak_version", "fft_size", "hop_samples", "load_audio",
    "load_resampled", "load_slurp_devel", "log_mel", "make_speakers", "mel_filterbank",
    "normalize_tokens", "normalize_utterance", "num_frames", "resample", "spec_augment",
    "split_of", "synthesize", "window_samples", "write_flac",
]
