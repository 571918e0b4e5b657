"""The faster-whisper adapter: the only module that imports `faster_whisper`.

It turns audio into the project's own types in three steps, so that the Serve deployment
can batch the middle one across requests:

1. `prepare`: VAD finds the speech; it is cut into work items of at most one 30 s window;
   the language is detected per request when the model is multilingual and none was given.
2. `run`: the batch function. Items in, results out (same length, same order). Items that
   decode alike are packed into shared windows, encoded and decoded in padded batches by
   CTranslate2, and split back so each item gets exactly its own words.
3. `assemble` (in `assembly.py`): one request's item results become its `Transcript`.

`transcribe` chains the three for one request: the in-process reference the service is
compared with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import TranscriptionOptions as FwOptions
from faster_whisper.transcribe import get_suppressed_tokens
from faster_whisper.vad import VadOptions, get_speech_timestamps

from services.core.logging import get_logger
from services.core.settings import Settings
from services.transcription.assembly import PreparedAudio, assemble
from services.transcription.domain import (
    SAMPLE_RATE,
    DecodeOptions,
    Segment,
    Task,
    Transcript,
    TranscriptionOptions,
    Waveform,
    Word,
)
from services.transcription.model_files import resolve_model_dir, served_model_id
from services.transcription.packing import (
    ItemResult,
    Piece,
    Window,
    WorkItem,
    compression_ratio,
    cut_short,
    group_by_decode,
    plan_windows,
    spans_callers,
    split_into_items,
    split_window,
    unheard_tail,
    window_fill,
)

log = get_logger(__name__)

_WINDOW_S = 30.0
_HOST = ctranslate2.Device.cpu
_VAD = VadOptions(max_speech_duration_s=_WINDOW_S, min_silence_duration_ms=160)
_CUT_VAD = VadOptions(min_silence_duration_ms=100, speech_pad_ms=30)
"""For choosing cuts: tight padding, so the gaps between spans are the pauses as heard."""
COMPRESSION_RATIO_THRESHOLD = 2.4
"""Whisper's sign of a repetition loop: the window's text compresses more than this."""
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
_PREPEND_PUNCTUATIONS = "\"'“¿([{-"
_APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass
class RunStats:
    """What the last `run` did, for metrics."""

    windows: int = 0
    speech_s: float = 0.0
    retried: int = 0
    fallbacks: int = 0

    @property
    def fill_s(self) -> float:
        return self.speech_s / self.windows if self.windows else 0.0


def speech_spans(audio: Waveform) -> list[tuple[int, int]]:
    """Where the VAD that `prepare` runs hears speech in `audio`, as [start, end) samples.

    Needs no model: the job tracker calls it on the window where it looks for a cut.
    """
    return [(int(c["start"]), int(c["end"])) for c in get_speech_timestamps(audio, _CUT_VAD)]


class WhisperEngine:
    def __init__(
        self,
        model_dir: Path,
        *,
        model_id: str,
        device: str = "auto",
        compute_type: str = "auto",
        cpu_threads: int = 2,
        num_workers: int = 1,
        beam_size: int = 1,
        decode_batch_size: int = 8,
        pack_across_requests: bool = True,
    ) -> None:
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        self.model_id = model_id
        self.device = device
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.decode_batch_size = decode_batch_size
        self.pack_across_requests = pack_across_requests
        self.last_run = RunStats()
        self._model = WhisperModel(
            str(model_dir),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            local_files_only=True,
        )
        log.info(
            "model_loaded",
            model=model_id,
            path=str(model_dir),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            multilingual=self.multilingual,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> WhisperEngine:
        whisper = settings.whisper
        return cls(
            resolve_model_dir(whisper.model, settings.model_cache_dir),
            model_id=served_model_id(settings),
            device=whisper.device,
            compute_type=whisper.compute_type,
            cpu_threads=whisper.cpu_threads,
            num_workers=whisper.num_workers,
            beam_size=whisper.beam_size,
            decode_batch_size=whisper.decode_batch_size,
            pack_across_requests=whisper.pack_across_requests,
        )

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    # -- step 1 -----------------------------------------------------------------------------

    def prepare(self, audio: Waveform, options: TranscriptionOptions) -> PreparedAudio:
        """Find the speech, cut it into window-sized items and settle the language."""
        clips = [(c["start"], c["end"]) for c in get_speech_timestamps(audio, _VAD)]
        decode = options.decode
        language, probability = decode.language or "en", 1.0
        if not self.multilingual:
            # An English-only model cannot translate: translating English is transcribing.
            decode = replace(decode, task=Task.TRANSCRIBE, language="en")
            language = "en"
        items = split_into_items(clips, audio, decode, word_timestamps=options.word_timestamps)
        if self.multilingual and decode.language is None and items:
            language, probability = self.detect_language(items[0].speech)
            items = [replace(item, decode=replace(decode, language=language)) for item in items]
        return PreparedAudio(
            items=items,
            language=language,
            language_probability=probability,
            duration_s=audio.shape[0] / SAMPLE_RATE,
            options=options,
        )

    def detect_language(self, speech: Waveform) -> tuple[str, float]:
        features = self._model.feature_extractor(speech[: int(_WINDOW_S * SAMPLE_RATE)])
        language, probability, _ = self._model.detect_language(features=features)
        return str(language), float(probability)

    # -- step 2: the batch function ------------------------------------------------------

    def run(self, items: Sequence[WorkItem], *, pack: bool | None = None) -> list[ItemResult]:
        """Transcribe a batch of items from any number of requests; one result per item."""
        pack = self.pack_across_requests if pack is None else pack
        results: list[ItemResult] = [[] for _ in items]
        stats = self.last_run = RunStats()
        for decode, indices in group_by_decode(items).items():
            group = [items[i] for i in indices]
            windows = plan_windows([item.samples for item in group], pack=pack)
            stats.windows += len(windows)
            stats.speech_s += window_fill([i.samples for i in group], windows) * len(windows)
            group_results: list[ItemResult] = [[] for _ in group]
            for start in range(0, len(windows), self.decode_batch_size):
                chunk = windows[start : start + self.decode_batch_size]
                self._decode_isolating_failures(group, chunk, decode, group_results)
            for index, result in zip(indices, group_results, strict=True):
                results[index] = result
        return results

    def _decode_isolating_failures(
        self,
        group: Sequence[WorkItem],
        windows: list[Window],
        decode: DecodeOptions,
        out: list[ItemResult],
    ) -> None:
        """Decode `windows`; if that fails, retry smaller so one bad item fails alone."""
        try:
            per_window = self._decode_windows(group, windows, decode)
            retry: list[Window] = []
            for window, segments in zip(windows, per_window, strict=True):
                split = split_window(window, group, segments, tokenize=self._tokenize)
                redo = set(cut_short(window, group, segments))
                for item_index, item_segments in split.items():
                    out[item_index] = item_segments
                    if len(window.placements) > 1 and _repetitive(item_segments):
                        redo.add(item_index)  # a loop: decoded alone, it may fall back
                for item_index in sorted(redo):
                    alone = Window()
                    alone.add(item_index, group[item_index].samples)
                    retry.append(alone)
        except Exception as exc:
            if len(windows) > 1:
                for window in windows:
                    self._decode_isolating_failures(group, [window], decode, out)
                return
            (window,) = windows
            if len(window.placements) > 1:
                for placement in window.placements:
                    alone = Window()
                    alone.add(placement.item, group[placement.item].samples)
                    self._decode_isolating_failures(group, [alone], decode, out)
                return
            log.warning("work_item_failed", error=repr(exc), exc_info=exc)
            out[window.placements[0].item] = exc
            return
        if retry:
            self.last_run.retried += len(retry)
            self._decode_isolating_failures(group, retry, decode, out)
        for window in windows:
            if len(window.placements) == 1:
                self._recover_tail(group[window.placements[0].item], window, decode, out)

    def _recover_tail(
        self, item: WorkItem, window: Window, decode: DecodeOptions, out: list[ItemResult]
    ) -> None:
        """Decode again, alone, the last pieces of an item the model stopped short of.

        Whisper sometimes ends a window's output before its last utterance (measured on long
        recordings: whole sentences lost at the end of 18-29 s items). Nothing else would
        ever transcribe them, so the unheard tail becomes an item of its own.
        """
        index = window.placements[0].item
        result = out[index]
        if isinstance(result, Exception):
            return
        tail = unheard_tail(item, result)
        if tail is None:
            return
        self.last_run.retried += 1
        alone = Window()
        alone.add(0, tail.samples)
        tail_out: list[ItemResult] = [[]]
        self._decode_isolating_failures([tail], [alone], decode, tail_out)
        recovered = tail_out[0]
        if not isinstance(recovered, Exception):
            out[index] = [*result, *recovered]

    def _decode_windows(
        self, group: Sequence[WorkItem], windows: list[Window], decode: DecodeOptions
    ) -> list[list[Segment]]:
        """Decode windows, falling back to hotter temperatures for repetition loops.

        A one-caller window whose text compresses more than Whisper's threshold is stuck
        in a loop; like sequential Whisper, it is decoded again at the next temperature
        until it is not (the least repetitive attempt is kept if none passes). A shared
        window is never judged as a whole: callers saying the same thing would look like
        a loop. Its callers are judged one by one after the split, and a looping one is
        decoded again alone.
        """
        results = self._decode_once(group, windows, decode)
        looping = [
            k
            for k, segments in enumerate(results)
            if len(windows[k].placements) == 1 and _repetitive(segments)
        ]
        for temperature in FALLBACK_TEMPERATURES:
            if not looping or temperature <= decode.temperature:
                continue
            self.last_run.fallbacks += len(looping)
            hotter = replace(decode, temperature=temperature)
            retried = self._decode_once(group, [windows[k] for k in looping], hotter)
            for k, segments in zip(looping, retried, strict=True):
                if _text_ratio(segments) < _text_ratio(results[k]):
                    results[k] = segments
            looping = [k for k in looping if _repetitive(results[k])]
        return results

    def _decode_once(
        self, group: Sequence[WorkItem], windows: list[Window], decode: DecodeOptions
    ) -> list[list[Segment]]:
        """Run the model on whole windows; segments come back in window-local seconds.

        Word alignment costs 10-25 % more on CPU, so windows are decoded without it and
        aligned afterwards only where needed: an item asked for words, or a segment runs
        across two callers of a shared window (measured: 1 segment in 31).
        """
        audios = [_window_audio(group, window) for window in windows]
        tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task=decode.task.value,
            language=decode.language or "en",
        )
        features = np.stack(
            [pad_or_trim(self._model.feature_extractor(audio)[..., :-1]) for audio in audios]
        )
        # Each window sits at a whole multiple of 30 s on a shared timeline, as the library's
        # own pipeline lays out its chunks; that keeps its timestamp arithmetic exact.
        metadata = [
            {"offset": k * _WINDOW_S, "duration": audio.shape[0] / SAMPLE_RATE, "segments": []}
            for k, audio in enumerate(audios)
        ]
        options = self._options(tokenizer, decode, words=False)
        pipeline = _Pipeline(self._model)
        outputs = pipeline.forward(features, tokenizer, metadata, options)

        def segments_of(k: int) -> list[Segment]:
            return [_to_segment(raw, k * _WINDOW_S, decode.temperature) for raw in outputs[k]]

        align = [
            k
            for k, window in enumerate(windows)
            if outputs[k]
            and (
                any(group[p.item].word_timestamps for p in window.placements)
                or spans_callers(window, group, segments_of(k))
            )
        ]
        if align:
            pipeline.align(align, outputs, tokenizer, metadata, options)
        return [segments_of(k) for k in range(len(windows))]

    def _options(self, tokenizer: Tokenizer, decode: DecodeOptions, words: bool) -> FwOptions:
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
            word_timestamps=words,
            prepend_punctuations=_PREPEND_PUNCTUATIONS,
            append_punctuations=_APPEND_PUNCTUATIONS,
            multilingual=False,
            max_new_tokens=None,
            clip_timestamps=[],
            hallucination_silence_threshold=None,
            hotwords=None,
        )

    def _tokenize(self, text: str) -> list[int]:
        return list(self._model.hf_tokenizer.encode(text, add_special_tokens=False).ids)

    # -- step 3 and the one-request path ---------------------------------------------------

    def transcribe(
        self, audio: Waveform, options: TranscriptionOptions, *, pack: bool | None = None
    ) -> Transcript:
        """One request, in process: the reference the service must match."""
        prepared = self.prepare(audio, options)
        return assemble(prepared, self.run(prepared.items, pack=pack))

    def warm_up(self) -> None:
        """Run VAD and the model once on a short tone: a replica is ready only if both work."""
        tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(
            np.float32
        )
        get_speech_timestamps(tone, _VAD)  # loads the VAD model now, not on the first request
        item = WorkItem(
            speech=tone,
            pieces=[Piece(item_offset=0, source_start=0, length=tone.shape[0])],
            decode=DecodeOptions(language="en"),
        )
        (result,) = self.run([item])
        if isinstance(result, Exception):
            raise RuntimeError("the warm-up transcription failed") from result


def _text_ratio(segments: Sequence[Segment]) -> float:
    return compression_ratio("".join(segment.text for segment in segments))


def _repetitive(segments: Sequence[Segment]) -> bool:
    return _text_ratio(segments) > COMPRESSION_RATIO_THRESHOLD


def _window_audio(group: Sequence[WorkItem], window: Window) -> Waveform:
    audio = np.zeros(window.samples, dtype=np.float32)
    for placement in window.placements:
        speech = group[placement.item].speech
        audio[placement.window_offset : placement.window_offset + speech.shape[0]] = speech
    return audio


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
        """Add word timestamps to `outputs[k]` for each k in `indices`, in place."""
        encoder = self._encoder_output
        on_host = np.asarray(encoder if encoder.device == "cpu" else encoder.to_device(_HOST))
        subset = ctranslate2.StorageView.from_array(np.ascontiguousarray(on_host[indices]))
        if encoder.device != "cpu":
            subset = subset.to_device(ctranslate2.Device.cuda)
        frames = [
            int(math.ceil(metadata[k]["duration"]) * self.model.frames_per_second) for k in indices
        ]
        self.model.add_word_timestamps(
            [outputs[k] for k in indices],
            tokenizer,
            subset,
            frames,
            options.prepend_punctuations,
            options.append_punctuations,
            0.0,
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
        prompt = model.get_prompt(tokenizer, previous_tokens=previous, without_timestamps=False)
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
