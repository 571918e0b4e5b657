"""Everything that touches faster-whisper: the one module that imports it.

The engine (`engine.py`) decides what to decode, in which windows, and what to do about
what comes back; this module loads the model, runs the VAD, and decodes whole 30 s windows
in padded batches through the library's `BatchedInferencePipeline`. It goes beyond the
library's public API in two places, both pinned by `tests/unit/test_whisper_adapter.py` to
the version below:

- `_Pipeline` overrides `generate_segment_batched` (to sample at the requested temperature,
  which the library ignores, and to keep the encoder output) and relies on `forward`
  calling it and splitting segments with `WhisperModel._split_segments_by_timestamps`;
- `_Pipeline.align` reads that kept encoder output (`_encoder_output`) and calls
  `WhisperModel.add_word_timestamps` on just the windows that need words.

A faster-whisper upgrade must re-check both, then move `WRITTEN_FOR`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import numpy.typing as npt
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import TranscriptionOptions as FwOptions
from faster_whisper.transcribe import get_suppressed_tokens
from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

from services.transcription.domain import (
    SAMPLE_RATE,
    DecodeOptions,
    Segment,
    TokenLogprob,
    VadSettings,
    Waveform,
    Word,
)
from services.transcription.logprobs import token_logprob
from services.transcription.splitting import COMPRESSION_RATIO_THRESHOLD
from services.transcription.vad_stream import FRAME_SAMPLES, SpeechTracker, VadLimits

WRITTEN_FOR = "1.2.1"
"""The faster-whisper version whose internals `_Pipeline` was written against."""

WINDOW_S = 30.0

_HOST = ctranslate2.Device.cpu
_VAD = VadOptions(max_speech_duration_s=WINDOW_S, min_silence_duration_ms=160)
"""For finding the speech to transcribe: the library pipeline's own settings (`VadSettings()`
holds the same threshold, padding and silence)."""
_CUT_VAD = VadOptions(min_silence_duration_ms=100, speech_pad_ms=30)
"""For choosing cuts: tight padding, so the gaps between spans are the pauses as heard."""
_PREPEND_PUNCTUATIONS = "\"'“¿([{-"
_APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def speech_clips(audio: Waveform, vad: VadSettings | None = None) -> list[tuple[int, int]]:
    """The speech in `audio` to transcribe, as [start, end) samples, at most 30 s each."""
    options = _VAD
    if vad is not None and vad != VadSettings():
        options = VadOptions(
            threshold=vad.threshold,
            max_speech_duration_s=WINDOW_S,
            min_silence_duration_ms=vad.min_silence_duration_ms,
            speech_pad_ms=vad.speech_pad_ms,
        )
    return [(int(c["start"]), int(c["end"])) for c in get_speech_timestamps(audio, options)]


class StreamingVad:
    """`speech_clips` for audio that arrives in blocks: the same clips, each as soon as it is
    final. Silero runs on every whole 512-sample frame as it arrives, with its recurrent
    state and the 64-sample context carried from block to block, which gives the numbers
    the library's whole-file call gives (it runs frames in batches with the same carry); the
    last, padded frame is run by `finish`, with its tail zeroed as the library does."""

    CONTEXT = 64
    BATCH_FRAMES = 10_000

    def __init__(self, vad: VadSettings | None = None) -> None:
        self._session = get_vad_model().session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(self.CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._tracker = SpeechTracker(VadLimits.of(vad or VadSettings(), max_speech_s=WINDOW_S))
        self.samples = 0

    def feed(self, block: Waveform) -> list[tuple[int, int]]:
        """The clips that are final once `block` (the next samples) is heard."""
        self.samples += block.shape[0]
        buffer = np.concatenate([self._pending, block.astype(np.float32, copy=False)])
        whole = buffer.shape[0] // FRAME_SAMPLES * FRAME_SAMPLES
        self._pending = buffer[whole:].copy()
        frames = buffer[:whole].reshape(-1, FRAME_SAMPLES)
        return self._tracker.push(self._probabilities(frames))

    def finish(self) -> list[tuple[int, int]]:
        """Every clip not handed out yet, after the last block."""
        last = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        last[: self._pending.shape[0]] = self._pending
        last[-self.CONTEXT :] = 0.0
        final = self._tracker.push(self._probabilities(last[None, :]))
        return final + self._tracker.finish(self.samples)

    def _probabilities(self, frames: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if frames.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        contexts = np.concatenate([self._context[None, :], frames[:-1, -self.CONTEXT :]])
        self._context = frames[-1, -self.CONTEXT :].copy()
        inputs = np.concatenate([contexts, frames], axis=1)
        out = []
        for start in range(0, inputs.shape[0], self.BATCH_FRAMES):
            probabilities, self._h, self._c = self._session.run(
                None,
                {"input": inputs[start : start + self.BATCH_FRAMES], "h": self._h, "c": self._c},
            )
            out.append(np.asarray(probabilities, dtype=np.float32).reshape(-1))
        return np.concatenate(out)


def speech_spans(audio: Waveform) -> list[tuple[int, int]]:
    """Where speech is heard in `audio`, tightly padded, as [start, end) samples.

    Needs no model: the job tracker calls it on the window where it looks for a cut.
    """
    return [(int(c["start"]), int(c["end"])) for c in get_speech_timestamps(audio, _CUT_VAD)]


class WindowDecoder:
    """A loaded Whisper model that decodes batches of 30 s windows into `Segment`s."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str,
        compute_type: str,
        cpu_threads: int,
        num_workers: int,
        beam_size: int,
    ) -> None:
        self.beam_size = beam_size
        self._model = WhisperModel(
            str(model_dir),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            local_files_only=True,
        )

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    @property
    def eot(self) -> int:
        """The end-of-text token: ids from it up are special or timestamp tokens."""
        return int(self._model.hf_tokenizer.token_to_id("<|endoftext|>"))

    def detect_language(self, speech: Waveform) -> tuple[str, float]:
        features = self._model.feature_extractor(speech[: int(WINDOW_S * SAMPLE_RATE)])
        language, probability, _ = self._model.detect_language(features=features)
        return str(language), float(probability)

    def language_probabilities(self, speech: Waveform) -> list[tuple[str, float]]:
        """Every language with the model's probability for it, most likely first, from the
        first 30 s of `speech`."""
        features = self._model.feature_extractor(speech[: int(WINDOW_S * SAMPLE_RATE)])
        _, _, ranked = self._model.detect_language(features=features)
        return [(str(code), float(p)) for code, p in ranked]

    def token_logprobs(
        self, audios: Sequence[Waveform], tokens: Sequence[list[int]], decode: DecodeOptions
    ) -> list[list[TokenLogprob]]:
        """The model's log-probability of each text token in `tokens[k]` given `audios[k]`
        (at most one window each), by forced alignment: CTranslate2 scores every token of
        the transcript in one pass. Timestamp and special tokens are skipped; the answer
        holds one entry per text token, in order."""
        tokenizer = self._tokenizer(decode)
        text = [[t for t in seq if t < tokenizer.eot] for seq in tokens]
        wanted = [k for k, seq in enumerate(text) if seq]
        out: list[list[TokenLogprob]] = [[] for _ in tokens]
        if not wanted:
            return out
        features = np.stack(
            [pad_or_trim(self._model.feature_extractor(audios[k])[..., :-1]) for k in wanted]
        )
        encoder_output = self._model.encode(features)
        frames = [
            int(math.ceil(audios[k].shape[0] / SAMPLE_RATE) * self._model.frames_per_second)
            for k in wanted
        ]
        results = self._model.model.align(
            encoder_output, tokenizer.sot_sequence, [text[k] for k in wanted], frames
        )
        vocabulary = self._model.hf_tokenizer
        for k, result in zip(wanted, results, strict=True):
            out[k] = [
                token_logprob(vocabulary.id_to_token(token), probability)
                for token, probability in zip(text[k], result.text_token_probs, strict=True)
            ]
        return out

    def _tokenizer(self, decode: DecodeOptions) -> Tokenizer:
        return Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task=decode.task.value,
            language=decode.language or "en",
        )

    def tokenize(self, text: str) -> list[int]:
        return list(self._model.hf_tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(
        self,
        audios: Sequence[Waveform],
        decode: DecodeOptions,
        *,
        needs_words: Callable[[int, list[Segment]], bool],
    ) -> list[list[Segment]]:
        """Run the model on whole windows; segments come back in window-local seconds.

        Word alignment costs 10-25 % more on CPU, so windows are decoded without it and
        aligned afterwards only where `needs_words(k, segments of window k)` says so.
        """
        tokenizer = self._tokenizer(decode)
        features = np.stack(
            [pad_or_trim(self._model.feature_extractor(audio)[..., :-1]) for audio in audios]
        )
        # Each window sits at a whole multiple of 30 s on a shared timeline, as the library's
        # own pipeline lays out its chunks; that keeps its timestamp arithmetic exact.
        metadata = [
            {"offset": k * WINDOW_S, "duration": audio.shape[0] / SAMPLE_RATE, "segments": []}
            for k, audio in enumerate(audios)
        ]
        options = self._options(tokenizer, decode)
        pipeline = _Pipeline(self._model)
        outputs = pipeline.forward(features, tokenizer, metadata, options)

        def segments_of(k: int) -> list[Segment]:
            return [_to_segment(raw, k * WINDOW_S, decode.temperature) for raw in outputs[k]]

        decoded = [segments_of(k) for k in range(len(audios))]
        align = [k for k in range(len(audios)) if outputs[k] and needs_words(k, decoded[k])]
        if align:
            pipeline.align(align, outputs, tokenizer, metadata, options)
            for k in align:
                decoded[k] = segments_of(k)
        return decoded

    def _options(self, tokenizer: Tokenizer, decode: DecodeOptions) -> FwOptions:
        return FwOptions(
            beam_size=self.beam_size,
            best_of=5,
            patience=1.0,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            log_prob_threshold=-1.0,
            no_speech_threshold=0.6,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5,
            temperatures=[decode.temperature],
            initial_prompt=decode.prompt,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            without_timestamps=False,
            max_initial_timestamp=0.0,
            word_timestamps=False,
            prepend_punctuations=_PREPEND_PUNCTUATIONS,
            append_punctuations=_APPEND_PUNCTUATIONS,
            multilingual=False,
            max_new_tokens=None,
            clip_timestamps=[],
            hallucination_silence_threshold=None,
            hotwords=decode.hotwords,
        )


def warm_up_vad() -> None:
    """Load the VAD model now, not on the first request."""
    get_speech_timestamps(np.zeros(SAMPLE_RATE, dtype=np.float32), _VAD)


def _to_segment(raw: dict[str, Any], offset_s: float, temperature: float) -> Segment:
    words = [
        Word(
            start=float(w["start"]) - offset_s,
            end=float(w["end"]) - offset_s,
            word=str(w["word"]),
            probability=float(w["probability"]),
        )
        for w in raw.get("words") or []
    ]
    return Segment(
        id=0,
        seek=0,
        start=float(raw["start"]) - offset_s,
        end=float(raw["end"]) - offset_s,
        text=str(raw["text"]),
        tokens=[int(t) for t in raw["tokens"]],
        temperature=temperature,
        avg_logprob=float(raw["avg_logprob"]),
        compression_ratio=float(raw["compression_ratio"]),
        no_speech_prob=float(raw["no_speech_prob"]),
        words=words,
    )


class _Pipeline(BatchedInferencePipeline):  # type: ignore[misc]
    """The library's batched pipeline, with `temperature` honoured and alignment on demand.

    The library always decodes greedily or by beam, whatever the temperature; above 0 this
    samples at the requested temperature. It also keeps the encoder output of the last
    batch, so that word alignment can run afterwards on just the windows that need it.
    """

    def align(
        self,
        indices: list[int],
        outputs: list[list[dict[str, Any]]],
        tokenizer: Tokenizer,
        metadata: list[dict[str, Any]],
        options: FwOptions,
    ) -> None:
        """Add word timestamps to `outputs[k]` for each k in `indices`, in place.

        One window per call, from its own start: the library carries the last speech's end
        across a call's windows and shortens a first word long after it (moved up to 0.3 s).
        """
        encoder = self._encoder_output
        on_host = np.asarray(encoder if encoder.device == "cpu" else encoder.to_device(_HOST))
        for k in indices:
            window = ctranslate2.StorageView.from_array(np.ascontiguousarray(on_host[[k]]))
            if encoder.device != "cpu":
                window = window.to_device(ctranslate2.Device.cuda)
            self.model.add_word_timestamps(
                [outputs[k]],
                tokenizer,
                window,
                [int(math.ceil(metadata[k]["duration"]) * self.model.frames_per_second)],
                options.prepend_punctuations,
                options.append_punctuations,
                float(metadata[k]["offset"]),
            )

    def generate_segment_batched(
        self, features: np.ndarray, tokenizer: Tokenizer, options: FwOptions
    ) -> tuple[Any, list[dict[str, Any]]]:
        temperature = options.temperatures[0]
        if temperature <= 0:
            result: tuple[Any, list[dict[str, Any]]] = super().generate_segment_batched(
                features, tokenizer, options
            )
            self._encoder_output = result[0]
            return result
        model = self.model
        previous = tokenizer.encode(options.initial_prompt) if options.initial_prompt else []
        prompt = model.get_prompt(
            tokenizer,
            previous_tokens=previous,
            without_timestamps=False,
            hotwords=options.hotwords,
        )
        encoder_output = self._encoder_output = model.encode(features)
        results = model.model.generate(
            encoder_output,
            [list(prompt) for _ in range(features.shape[0])],
            beam_size=1,
            sampling_topk=0,
            sampling_temperature=temperature,
            max_length=model.max_length,
            suppress_blank=options.suppress_blank,
            suppress_tokens=options.suppress_tokens,
            return_scores=True,
            return_no_speech_prob=True,
        )
        output = []
        for res in results:
            tokens = res.sequences_ids[0]
            output.append(
                {
                    "avg_logprob": res.scores[0] * len(tokens) / (len(tokens) + 1),
                    "no_speech_prob": res.no_speech_prob,
                    "tokens": tokens,
                }
            )
        return encoder_output, output
