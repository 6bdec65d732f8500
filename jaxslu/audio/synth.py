"""Speech synthesis with eSpeak NG (the library and data shipped by `espeakng-loader`), via ctypes.

`synthesize(text, voice=..., rate=..., pitch=...)` returns float32 audio at the requested rate;
`make_speakers(n, seed)` makes a deterministic panel of synthetic speakers with English accents
and home coordinates near each accent's region (used by the spoken-SLURP builder and by the
fairness experiments).

How the library is driven (choices that were open):
- eSpeak NG keeps global state, so every call holds one module lock.
- Determinism: within one process, repeated identical calls to a loaded libespeak-ng do NOT give
  identical samples (measured with 1.52.0: lengths differ by a few samples), because the wave
  generator keeps function-static state across utterances (e.g. the pitch-flutter index) that no
  API call resets. So each synthesis loads a private copy of the library (copied once per
  process into a temporary folder, so it never shares state with another user of the original
  .so in this process), initializes it (AUDIO_OUTPUT_SYNCHRONOUS), seeds its noise generator
  (`espeak_ng_SetRandSeed(seed)`), synthesizes, then terminates and unloads it (dlclose). This
  costs a few milliseconds per call and makes the output a pure function of the parameters.
- Voices are selected by their eSpeak file identifier (e.g. "gmw/en-GB-scotland"), and the
  voice actually loaded is checked against it: `espeak_SetVoiceByName("en-gb")` for instance
  fails and leaves the previous voice in place, which would silently give the wrong accent.
- Voice variants (`variant="f3"`, the `espeak-ng-data/voices/!v` files m1..m7 and f1..f5 of
  VARIANTS) select "<identifier>+<variant>": the variant changes the voice's pitch range,
  formants, flutter and roughness (and so its gender) while the accent (phonemes, rules) stays
  the voice's. eSpeak falls back silently to the plain voice for an unknown variant, so the
  loaded identifier must equal "<identifier>+<variant>" and the loaded voice's gender must be
  the variant's (1 male, 2 female), else SynthesisError. The eSpeak base pitch (`pitch`) is a
  position inside the variant's own pitch range, so a female variant stays higher than a male
  one at any `pitch`. Without a variant, parameters and cache keys are those of earlier
  versions (the key holds `variant` only when one is given).
- Audio comes out as int16 at the library's rate (22050 Hz), is scaled by 1/32768 and resampled
  (jaxslu.audio.io.resample) to `sample_rate`.
- Noise: white Gaussian noise (numpy default_rng(seed)) scaled so that the ratio of the clean
  clip's mean power (whole clip, leading/trailing silence included) to the noise's mean power is
  exactly noise_snr_db; the sum is clipped to [-1, 1] (eSpeak peaks near 0.75, so clipping only
  happens at very low SNRs).
- Cache: `cache_dir` holds one .npy per distinct parameter set (SHA-256 of the parameters, the
  eSpeak version and a format version), written atomically (temporary file + rename).
"""
from __future__ import annotations

import _ctypes
import atexit
import ctypes
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from jaxslu.audio.io import resample

__all__ = ["VOICES", "VARIANTS", "ACCENT_REGIONS", "SynthesisError", "Speaker", "synthesize",
           "make_speakers", "espeak_version", "check_voice"]

# voice key (lowercase BCP-47-like, as used in configs) -> eSpeak NG voice file identifier
VOICES: dict[str, str] = {
    "en-us": "gmw/en-US",
    "en-gb": "gmw/en",
    "en-gb-scotland": "gmw/en-GB-scotland",
    "en-gb-x-rp": "gmw/en-GB-x-rp",
    "en-gb-x-gbclan": "gmw/en-GB-x-gbclan",
    "en-gb-x-gbcwmd": "gmw/en-GB-x-gbcwmd",
    "en-029": "gmw/en-029",
    "en-us-nyc": "gmw/en-US-nyc",
}

# eSpeak NG voice variants (espeak-ng-data/voices/!v/<name>) -> the gender their file declares.
VARIANTS: dict[str, str] = {**{f"m{i}": "male" for i in range(1, 8)},
                            **{f"f{i}": "female" for i in range(1, 6)}}
_GENDER_CODE = {"male": 1, "female": 2}  # espeak_VOICE.gender


@dataclasses.dataclass(frozen=True)
class AccentRegion:
    """Where speakers of an accent live: centres (name, lat, lon) and a spread (km, 1 sigma)."""

    label: str
    centres: tuple[tuple[str, float, float], ...]
    spread_km: float


# Region centres follow eSpeak's own name for each voice (e.g. en-gb-x-gbcwmd is "English (West
# Midlands)", en-gb-x-gbclan "English (Lancaster)"). A speaker's home is one centre (uniform) plus
# an isotropic Gaussian offset of `spread_km` per axis.
ACCENT_REGIONS: dict[str, AccentRegion] = {
    "en-us": AccentRegion("general_american", (
        ("Chicago", 41.88, -87.63), ("Columbus", 39.96, -83.00), ("Denver", 39.74, -104.99),
        ("Los Angeles", 34.05, -118.24)), 40.0),
    "en-gb": AccentRegion("southern_british", (
        ("London", 51.51, -0.13), ("Reading", 51.45, -0.97), ("Bristol", 51.45, -2.59)), 25.0),
    "en-gb-scotland": AccentRegion("scottish", (
        ("Glasgow", 55.86, -4.25), ("Edinburgh", 55.95, -3.19)), 15.0),
    "en-gb-x-rp": AccentRegion("received_pronunciation", (
        ("Oxford", 51.75, -1.26), ("London", 51.51, -0.13)), 20.0),
    "en-gb-x-gbclan": AccentRegion("lancashire", (
        ("Lancaster", 54.05, -2.80), ("Preston", 53.76, -2.70)), 15.0),
    "en-gb-x-gbcwmd": AccentRegion("west_midlands", (
        ("Birmingham", 52.49, -1.89), ("Wolverhampton", 52.59, -2.13),
        ("Coventry", 52.41, -1.51)), 15.0),
    "en-029": AccentRegion("caribbean", (
        ("Kingston", 17.97, -76.79), ("Port of Spain", 10.66, -61.51),
        ("Bridgetown", 13.10, -59.61), ("Nassau", 25.05, -77.35)), 10.0),
    "en-us-nyc": AccentRegion("new_york", (("New York", 40.71, -74.01),), 15.0),
}

RATE_RANGE = (80, 450)  # eSpeak words per minute accepted by synthesize
PITCH_RANGE = (0, 100)  # eSpeak base pitch accepted by synthesize
_FORMAT_VERSION = 1  # bump when the synthesis pipeline changes, to invalidate caches

# eSpeak NG constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EE_OK = 0


class SynthesisError(RuntimeError):
    """eSpeak NG could not be loaded, initialized, or failed on an input."""


class _EspeakVoice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p),
                ("identifier", ctypes.c_char_p), ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte),
                ("variant", ctypes.c_ubyte), ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int),
                ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)
_LOCK = threading.Lock()
_chunks: list[np.ndarray] = []  # filled by the synthesis callback while _LOCK is held
_state: dict[str, object] = {}  # "lib_path", "data_path", "version": set once per process


@_CALLBACK
def _on_samples(wav, num_samples, events):  # noqa: ARG001 (events unused)
    if num_samples > 0:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).astype(np.int16, copy=True))
    return 0  # continue synthesis


def _private_library() -> tuple[str, str]:
    """(path of this process's private libespeak-ng copy, eSpeak data path); made once. Lock held."""
    if "lib_path" not in _state:
        try:
            import espeakng_loader
            src, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        except (ImportError, RuntimeError) as e:
            raise SynthesisError(f"eSpeak NG is unavailable ({e}); pip install espeakng-loader") from e
        tmp = tempfile.mkdtemp(prefix="jaxslu-espeak-")
        atexit.register(shutil.rmtree, tmp, True)
        dst = os.path.join(tmp, "libespeak-ng-jaxslu.so")
        shutil.copy2(src, dst)
        _state["lib_path"], _state["data_path"] = dst, data
    return _state["lib_path"], _state["data_path"]  # type: ignore[return-value]


class _Session:
    """One load -> initialize -> ... -> terminate -> unload cycle of the private library (lock held)."""

    lib: ctypes.CDLL
    sample_rate: int

    def __enter__(self) -> "_Session":
        lib_path, data_path = _private_library()
        lib = ctypes.CDLL(lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_EspeakVoice)
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        self.lib = lib
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(),
                                     _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            self._unload()
            raise SynthesisError(f"espeak_Initialize failed (returned {rate}) with data path "
                                 f"{data_path!r}; reinstall espeakng-loader")
        self.sample_rate = int(rate)
        lib.espeak_SetSynthCallback(_on_samples)
        return self

    def _unload(self) -> None:
        _ctypes.dlclose(self.lib._handle)

    def __exit__(self, *exc) -> None:
        self.lib.espeak_Terminate()
        self._unload()


def _select_voice(lib: ctypes.CDLL, voice: str, variant: str | None = None) -> None:
    """Load `voice` (a VOICES key), with `variant` (a VARIANTS key) if given, and check eSpeak
    really switched to it (identifier, and the variant's gender)."""
    ident = VOICES[voice] if variant is None else f"{VOICES[voice]}+{variant}"
    rc = lib.espeak_SetVoiceByName(ident.encode())
    cur = lib.espeak_GetCurrentVoice()
    got = cur.contents.identifier.decode() if cur and cur.contents.identifier else None
    what = f"voice {voice!r}" if variant is None else f"voice {voice!r} with variant {variant!r}"
    if rc != _EE_OK or got != ident:
        raise SynthesisError(f"eSpeak NG could not load {what} (file {ident!r}; error code "
                             f"{rc}, current voice {got!r}); check the espeakng-loader install")
    if variant is not None and cur.contents.gender != _GENDER_CODE[VARIANTS[variant]]:
        raise SynthesisError(f"eSpeak NG loaded {what} with gender code {cur.contents.gender}, "
                             f"not {VARIANTS[variant]} ({_GENDER_CODE[VARIANTS[variant]]}); check "
                             "the espeakng-loader install's voices/!v files")


def _check_voice_name(voice: str) -> None:
    if voice not in VOICES:
        raise ValueError(f"unknown voice {voice!r}; choose one of {sorted(VOICES)}")


def _check_variant_name(variant: str | None) -> None:
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown voice variant {variant!r}; choose one of {sorted(VARIANTS)} "
                         "(male m1..m7, female f1..f5) or None for the voice's own")


def check_voice(voice: str, variant: str | None = None) -> None:
    """Load `voice` (with `variant`) once; ValueError for an unknown name, SynthesisError if
    eSpeak cannot load it."""
    _check_voice_name(voice)
    _check_variant_name(variant)
    with _LOCK, _Session() as session:
        _select_voice(session.lib, voice, variant)


def espeak_version() -> str:
    """Version string of the bundled eSpeak NG library (e.g. "1.52.0")."""
    with _LOCK:
        if "version" not in _state:
            with _Session() as session:
                _state["version"] = session.lib.espeak_Info(None).decode()
        return _state["version"]  # type: ignore[return-value]


def _espeak(text: str, voice: str, rate: int, pitch: int, seed: int,
            variant: str | None = None) -> tuple[np.ndarray, int]:
    """Raw eSpeak output: (int16 samples, sample rate)."""
    data = text.encode("utf-8") + b"\0"
    with _LOCK, _Session() as session:
        lib = session.lib
        _select_voice(lib, voice, variant)
        lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        lib.espeak_ng_SetRandSeed(seed)
        _chunks.clear()
        try:
            rc = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            samples = np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)
        finally:
            _chunks.clear()
        if rc != _EE_OK:
            raise SynthesisError(f"espeak_Synth failed with code {rc} for text {text[:60]!r}")
        return samples, session.sample_rate


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def _add_noise(x: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """x + white Gaussian noise at exactly `snr_db` (clean mean power / noise mean power), clipped."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.shape[0])
    p_signal = float(np.mean(np.square(x, dtype=np.float64)))
    scale = math.sqrt(p_signal / (10.0 ** (snr_db / 10.0)) / float(np.mean(noise ** 2)))
    return np.clip(x + scale * noise, -1.0, 1.0).astype(np.float32)


def _cache_key(params: dict) -> str:
    blob = json.dumps({**params, "espeak": espeak_version(), "format": _FORMAT_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def synthesize(text: str, *, voice: str = "en-us", rate: int = 175, pitch: int = 50,
               noise_snr_db: float | None = None, seed: int = 0, sample_rate: int = 16000,
               cache_dir: str | os.PathLike | None = None,
               variant: str | None = None) -> np.ndarray:
    """Speak `text` with eSpeak NG; float32 mono in [-1, 1] at `sample_rate` Hz.

    voice: a key of VOICES; variant: None (the voice's own) or a key of VARIANTS (m1..m7 male,
    f1..f5 female: pitch range, formants and gender of the speaker); rate: words per minute in [80, 450]; pitch: eSpeak base pitch in
    [0, 100]; noise_snr_db: if set, add white noise at this SNR (dB, over the whole clip); seed:
    seeds eSpeak's internal noise generator and the added noise; cache_dir: if set, results are
    cached there by a hash of all parameters. The output is a deterministic function of the
    arguments (see the module docstring for how).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"synthesize needs non-empty text, got {text!r}")
    if "\0" in text:
        raise ValueError(f"synthesize: text must not contain NUL characters, got {text[:60]!r}")
    _check_voice_name(voice)
    _check_variant_name(variant)
    rate = _check_int("rate", rate, *RATE_RANGE)
    pitch = _check_int("pitch", pitch, *PITCH_RANGE)
    seed = _check_int("seed", seed, 0, 2**31 - 1)
    sample_rate = _check_int("sample_rate", sample_rate, 1000, 384000)
    if noise_snr_db is not None:
        if not math.isfinite(float(noise_snr_db)):
            raise ValueError(f"noise_snr_db must be a finite number of dB or None, "
                             f"got {noise_snr_db!r}")
        noise_snr_db = float(noise_snr_db)

    params = dict(text=text, voice=voice, rate=rate, pitch=pitch, noise_snr_db=noise_snr_db,
                  seed=seed, sample_rate=sample_rate)
    if variant is not None:  # absent otherwise: earlier corpora keep their cache keys
        params["variant"] = variant
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{_cache_key(params)}.npy"
        if cache_path.is_file():
            try:
                return np.load(cache_path).astype(np.float32, copy=False)
            except (OSError, ValueError):
                pass  # unreadable entry (e.g. disk trouble): re-synthesize and overwrite it

    samples, sr = _espeak(text, voice, rate, pitch, seed, variant)
    if samples.size == 0:
        raise SynthesisError(f"eSpeak NG produced no audio for text {text[:60]!r} (voice {voice!r}"
                             + (f", variant {variant!r})" if variant else ")"))
    x = resample(samples.astype(np.float32) / 32768.0, sr, sample_rate)
    x = np.clip(x, -1.0, 1.0)  # the resampling filter can overshoot slightly
    if noise_snr_db is not None:
        x = _add_noise(x, noise_snr_db, seed)

    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache_path.stem}.", suffix=".npy",
                                   dir=cache_path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, x)
            os.replace(tmp, cache_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return x


@dataclasses.dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: eSpeak voice, accent label, speaking rate/pitch, home coordinates."""

    id: str
    voice: str
    accent: str
    rate: int
    pitch: int
    lat: float
    lon: float


def make_speakers(n: int, seed: int = 0, *, voices: tuple[str, ...] | None = None) -> list[Speaker]:
    """`n` speakers; speaker i uses voices[i % len(voices)] (default: all VOICES, in order).

    Deterministic in `seed`. rate = round(175 * U(0.85, 1.15)) words per minute, pitch =
    round(50 + U(-15, 15)); home = a centre of the accent's region (ACCENT_REGIONS, uniform)
    plus a Gaussian offset of the region's spread (km) in each of north and east.
    Ids are "spk000", "spk001", ...
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"make_speakers needs n >= 1 speakers, got {n!r}")
    voices = tuple(VOICES) if voices is None else tuple(voices)
    if not voices:
        raise ValueError("make_speakers needs at least one voice")
    for v in voices:
        _check_voice_name(v)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(n)):
        voice = voices[i % len(voices)]
        region = ACCENT_REGIONS[voice]
        _, clat, clon = region.centres[int(rng.integers(len(region.centres)))]
        dn, de = rng.normal(0.0, region.spread_km, size=2)
        lat = clat + dn / 111.2
        lon = clon + de / (111.2 * math.cos(math.radians(clat)))
        rate = int(round(175 * rng.uniform(0.85, 1.15)))
        pitch = int(round(50 + rng.uniform(-15, 15)))
        out.append(Speaker(f"spk{i:03d}", voice, region.label, rate, pitch,
                           round(float(lat), 4), round(float(lon), 4)))
    return out


def phonemes(words: "list[str] | tuple[str, ...]", voice: str = "en-us") -> list[str]:
    """eSpeak NG's phoneme transcription (ASCII phoneme mnemonics) of each word, in one library
    session; a word eSpeak gives nothing for maps to "". Used to find words a recognizer would
    confuse (jaxslu.selflearn.confusions)."""
    _check_voice_name(voice)
    out: list[str] = []
    with _LOCK, _Session() as session:
        lib = session.lib
        _select_voice(lib, voice)
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                              ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        for w in words:
            buf = ctypes.c_char_p(w.encode("utf-8") + b"\0")
            ptr = ctypes.pointer(buf)
            parts = []
            for _ in range(64):  # a clause per call; a word is one clause
                res = lib.espeak_TextToPhonemes(ptr, _CHARS_UTF8, 0)
                if res:
                    parts.append(res.decode("utf-8", "replace"))
                if not ptr.contents.value:
                    break
            out.append(" ".join(p.strip() for p in parts if p.strip()))
    return out
