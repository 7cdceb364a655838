"""The embedded audio dataset of the default run: short synthetic music clips, generated deterministically.

Each clip is 0.512 s of 16 kHz mono (8,192 samples = 32 mel frames at hop 256) made of
- a timbre: "flute" (few soft partials, slow attack, 5 Hz vibrato), "clarinet" (odd partials ∝ 1/k),
  "brass" (all partials ∝ 1/k), "pluck" (a bright attack, partials ∝ k^-1.5, dying into a dull tone);
- a texture: "melody" (eighth notes on a random walk over the scale, some rests) or "chords" (triads
  on I, IV, V or vi, an octave lower, one per beat);
- a tempo (90, 120 or 150 bpm) and a major key (C, D, E, F, G or A), drawn at random;
- a random start within the first note, a loudness of −20 dBFS RMS ± 3 dB (less where the peak would pass
  0.9), and white noise at −70 dBFS.
At most 16 partials, all below 7 kHz, so nothing aliases at 16 kHz.

The class (what the model is conditioned on) is timbre × texture, 8 classes; tempo and key vary within a
class and are kept as tags in MTG-Jamendo's `category---value` form. Clip i of a split has class i mod 8 and
draws everything else from `numpy.random.default_rng([seed, split, i])`: the same clips on every machine.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np

from layersync.core.errors import UserValueError

SAMPLE_RATE_HZ = 16_000
CLIP_SAMPLES = 8_192  # 32 frames at hop 256
TIMBRES = ("flute", "clarinet", "brass", "pluck")
TEXTURES = ("melody", "chords")
CLASS_NAMES = tuple(f"{t}/{x}" for t in TIMBRES for x in TEXTURES)  # class = 2·timbre + texture
NUM_CLASSES = len(CLASS_NAMES)
TEMPOS_BPM = (90, 120, 150)
KEYS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9}  # semitones above C
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MAX_PARTIAL_HZ = 7_000.0
MAX_PARTIALS = 16
SEED = 20_260_101
Split = Literal["train", "test"]
_SPLIT_CODE = {"train": 0, "test": 1}


def _midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _degree_midi(root_midi: int, degree: int) -> int:
    """MIDI note of a major-scale degree (0 = the root, 7 = an octave up)."""
    return root_midi + 12 * (degree // 7) + MAJOR[degree % 7]


def _partials(timbre: str, f0: float) -> tuple[np.ndarray, np.ndarray]:
    """(partial numbers k, amplitudes a_k): at most MAX_PARTIALS, all below MAX_PARTIAL_HZ."""
    k = np.arange(1, min(MAX_PARTIALS, int(MAX_PARTIAL_HZ // f0)) + 1, dtype=np.float64)
    if timbre == "flute":
        k = k[:4]
        a = np.array([1.0, 0.25, 0.08, 0.03])[: len(k)]
    elif timbre == "clarinet":
        a = np.where(k % 2 == 1, 1.0 / k, 0.02 / k)
    elif timbre == "brass":
        a = 1.0 / k
    else:  # pluck: the bright part; `_note` crossfades it into a dull k^-3 part
        a = k**-1.5
    return k, a


_ATTACK_S = {"flute": 0.05, "clarinet": 0.02, "brass": 0.04, "pluck": 0.003}
_RELEASE_S = 0.02
_TABLE = 1024  # samples per period of a wavetable


_U = 2 * np.pi * np.arange(1, MAX_PARTIALS + 1)[:, None] * np.arange(_TABLE + 1)[None] / _TABLE
_SIN, _COS = np.sin(_U), np.cos(_U)  # (MAX_PARTIALS, _TABLE + 1): sin 2πku, cos 2πku


def _wavetable(k: np.ndarray, a: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """One period of Σ_k a_k sin(2π k u + φ_k) at _TABLE + 1 points of u ∈ [0, 1] (closed, for interpolation).

    sin(2πku + φ) = sin 2πku · cos φ + cos 2πku · sin φ: two matrix-vector products over fixed tables.
    """
    n, phi = len(k), phases[: len(k)]
    return (a * np.cos(phi)) @ _SIN[:n] + (a * np.sin(phi)) @ _COS[:n]


def _note(timbre: str, f0: float, t: np.ndarray, duration_s: float, phases: np.ndarray) -> np.ndarray:
    """One note of `timbre` at f0 Hz over note-local times t (s), length `duration_s`.

    A harmonic tone is periodic in its phase u(t) = f0 t, so it is read from a one-period wavetable with
    linear interpolation. Flute: f(t) = f0 (1 + 0.004 sin 2π5t) ⇒ u(t) = f0 (t + 0.004 (1 − cos 2π5t)/(2π5)).
    Pluck: a bright tone (a_k = k^-1.5) decaying as e^{-9t} over a dull one (a_k = k^-3) decaying as e^{-3t}.
    """
    k, a = _partials(timbre, f0)
    if timbre == "flute":
        w = 2 * np.pi * 5.0
        u = f0 * (t + 0.004 * (1 - np.cos(w * t)) / w)
    else:
        u = f0 * t
    pos = (u % 1.0) * _TABLE
    idx = pos.astype(np.int64)
    frac = pos - idx

    def read(table: np.ndarray) -> np.ndarray:
        return table[idx] * (1 - frac) + table[idx + 1] * frac

    if timbre == "pluck":
        bright, dull = read(_wavetable(k, a, phases)), read(_wavetable(k, k**-3, phases))
        tone = bright * np.exp(-9 * t) + dull * np.exp(-3 * t)
    else:
        tone = read(_wavetable(k, a, phases))
    envelope = np.minimum(1.0, t / _ATTACK_S[timbre]) * np.clip((duration_s - t) / _RELEASE_S, 0.0, 1.0)
    return tone * envelope  # (n,)


def synth_clip(label: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """One clip of class `label` as (waveform (CLIP_SAMPLES,) float32, tags)."""
    if not 0 <= label < NUM_CLASSES:
        raise UserValueError(f"label must be in [0, {NUM_CLASSES - 1}], got {label}")
    timbre, texture = TIMBRES[label // 2], TEXTURES[label % 2]
    tempo = TEMPOS_BPM[rng.integers(len(TEMPOS_BPM))]
    key = list(KEYS)[rng.integers(len(KEYS))]
    beat_s = 60.0 / tempo
    step_s = beat_s / 2 if texture == "melody" else beat_s
    offset_s = rng.uniform(0, step_s)  # the clip starts inside the first note
    clip_s = CLIP_SAMPLES / SAMPLE_RATE_HZ
    out = np.zeros(CLIP_SAMPLES)
    degree = int(rng.integers(0, 8))
    for j in range(int(np.ceil((clip_s + offset_s) / step_s))):
        start_s = j * step_s - offset_s
        lo = max(0, int(np.ceil(start_s * SAMPLE_RATE_HZ)))
        hi = min(CLIP_SAMPLES, int(np.ceil((start_s + step_s) * SAMPLE_RATE_HZ)))
        t = np.arange(lo, hi) / SAMPLE_RATE_HZ - start_s  # note-local time
        if texture == "melody":
            degree = int(np.clip(degree + rng.choice([-2, -1, 0, 1, 2]), 0, 10))
            if rng.random() < 0.15:
                continue  # a rest
            notes = [_degree_midi(60 + KEYS[key], degree)]
        else:
            root = int(rng.choice([0, 3, 4, 5]))  # I, IV, V, vi
            notes = [_degree_midi(48 + KEYS[key], root + d) for d in (0, 2, 4)]
        for midi in notes:
            phases = rng.uniform(0, 2 * np.pi, MAX_PARTIALS)
            out[lo:hi] += _note(timbre, _midi_hz(midi), t, step_s, phases)
    rms, peak = np.sqrt(np.mean(out**2)), np.abs(out).max()
    if rms > 0:
        out *= min(0.1 * 10 ** (rng.uniform(-3, 3) / 20) / rms, 0.9 / peak)  # −20 dBFS ± 3 dB, peak ≤ 0.9
    out += rng.normal(0, 10 ** (-70 / 20), CLIP_SAMPLES)  # −70 dBFS noise floor
    tags = [f"timbre---{timbre}", f"texture---{texture}", f"tempo---{tempo}", f"key---{key}"]
    return np.clip(out, -1, 1).astype(np.float32), tags


@lru_cache(maxsize=4)
def synth_dataset(split: Split, per_class: int) -> tuple[np.ndarray, np.ndarray, tuple[tuple[str, ...], ...]]:
    """`per_class` clips of each class: (waveforms (N, CLIP_SAMPLES) float32, labels (N,) int64, tags)."""
    if split not in _SPLIT_CODE:
        raise UserValueError(f"split must be 'train' or 'test', got {split!r}")
    if per_class < 1:
        raise UserValueError(f"per_class must be ≥ 1, got {per_class}")
    n = per_class * NUM_CLASSES
    waves = np.empty((n, CLIP_SAMPLES), np.float32)
    labels = np.arange(n, dtype=np.int64) % NUM_CLASSES
    tags = []
    for i in range(n):
        waves[i], clip_tags = synth_clip(int(labels[i]), np.random.default_rng([SEED, _SPLIT_CODE[split], i]))
        tags.append(tuple(clip_tags))
    waves.setflags(write=False)
    labels.setflags(write=False)
    return waves, labels, tuple(tags)
