"""A GE2E speaker encoder (3 LSTM layers and a linear projection) in front of numpy mel frames.

The weights are the ones the `resemblyzer` package ships (Apache-2.0, trained on
LibriSpeech, VoxCeleb 1 and 2). We read its `pretrained.pt` directly and run our own small
module over it: importing `resemblyzer` itself would pull in librosa and webrtcvad, whose
import breaks on recent setuptools. The mel filterbank below reproduces the frames the
encoder was trained on (25 ms Hann windows every 10 ms, 40 Slaney mel bands, power, not log).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
N_MELS = 40
WINDOW_FRAMES = 160
"""1.6 s of frames: the partial-utterance length the encoder was trained on."""
EMBEDDING_SIZE = 256

FloatArray = npt.NDArray[np.float32]


class DiarizationUnavailableError(RuntimeError):
    """The optional extra (torch and the encoder weights) is not installed."""


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Slaney's scale: linear below 1 kHz, logarithmic above.
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    linear = mel * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


@lru_cache(maxsize=1)
def mel_filterbank() -> npt.NDArray[np.float64]:
    """(N_MELS, N_FFT // 2 + 1) triangular filters, each scaled to unit area (Slaney norm)."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(np.array(SAMPLE_RATE / 2.0))), N_MELS + 2))
    bank = np.zeros((N_MELS, bins.size))
    for band in range(N_MELS):
        low, mid, high = edges[band], edges[band + 1], edges[band + 2]
        rising = (bins - low) / (mid - low)
        falling = (high - bins) / (high - mid)
        bank[band] = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (high - low))
    return bank


def mel_frames(audio: FloatArray) -> FloatArray:
    """(frames, N_MELS) power mel spectrogram, one frame every 10 ms (centred, zero-padded)."""
    padded = np.pad(audio.astype(np.float64), N_FFT // 2)
    count = 1 + (padded.size - N_FFT) // HOP
    if count <= 0:
        return np.zeros((0, N_MELS), dtype=np.float32)
    index = np.arange(N_FFT)[None, :] + HOP * np.arange(count)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    power = np.abs(np.fft.rfft(padded[index] * window, axis=1)) ** 2
    return (power @ mel_filterbank().T).astype(np.float32)


def normalise_volume(audio: FloatArray, target_dbfs: float = -30.0) -> FloatArray:
    """Raise quiet audio to the loudness the encoder was trained at (never lowers it)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    if rms <= 0.0:
        return audio
    gain_db = target_dbfs - 20 * np.log10(rms)
    return audio * np.float32(10 ** (gain_db / 20)) if gain_db > 0 else audio


def weights_path() -> Path:
    """resemblyzer's bundled `pretrained.pt`, found without importing the package."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise DiarizationUnavailableError(
            "speaker labels need the optional extra: pip install 'rayscribe[diarization]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise DiarizationUnavailableError(f"the speaker encoder's weights are missing: {path}")
    return path


class SpeakerEncoder:
    """Embeds mel windows into unit-length 256-d speaker vectors (CPU, torch)."""

    def __init__(self, threads: int | None = None) -> None:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise DiarizationUnavailableError(
                "speaker labels need the optional extra: pip install 'rayscribe[diarization]'"
            ) from exc
        if threads:
            torch.set_num_threads(threads)
        self._torch: Any = torch
        self._lstm = torch.nn.LSTM(N_MELS, 256, num_layers=3, batch_first=True)
        self._linear = torch.nn.Linear(256, EMBEDDING_SIZE)
        state = torch.load(weights_path(), map_location="cpu", weights_only=False)["model_state"]
        self._lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
        self._linear.load_state_dict(
            {k[7:]: v for k, v in state.items() if k.startswith("linear.")}
        )
        self._lstm.eval()
        self._linear.eval()

    def embed(self, windows: FloatArray, batch: int = 64) -> FloatArray:
        """(n, frames, N_MELS) mel windows of one length -> (n, 256) unit vectors."""
        torch = self._torch
        out: list[FloatArray] = []
        with torch.inference_mode():
            for start in range(0, windows.shape[0], batch):
                mels = torch.from_numpy(np.ascontiguousarray(windows[start : start + batch]))
                _, (hidden, _) = self._lstm(mels)
                raw = torch.relu(self._linear(hidden[-1]))
                unit = raw / torch.clamp(torch.norm(raw, dim=1, keepdim=True), min=1e-8)
                out.append(unit.numpy().astype(np.float32))
        if not out:
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)
        return np.concatenate(out)
