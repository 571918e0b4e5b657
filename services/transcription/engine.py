"""The engine: what to decode, in which windows, and what to do about what comes back.

The model itself (loading, VAD, decoding windows) is behind `whisper_adapter.py`, the only
module that imports `faster_whisper`. The engine turns audio into the project's own types
in three steps, so that the Serve deployment can batch the middle one across requests:

1. `prepare`: VAD finds the speech; it is cut into work items of at most one 30 s window
   (`find_items`, no model needed); the language is settled (`settle`: detected per request
   when the model is multilingual and none was given).
2. `run`: the batch function. Items in, results out (same length, same order). Items that
   decode alike are packed into shared windows, encoded and decoded in padded batches by
   CTranslate2, and split back so each item gets exactly its own words.
3. `assemble` (in `assembly.py`): one request's item results become its `Transcript`.

`transcribe` chains the three for one request: the in-process reference the service is
compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import ctranslate2
import numpy as np

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
)
from services.transcription.logprobs import add_logprobs
from services.transcription.model_files import resolve_model_dir, served_model_id
from services.transcription.packing import (
    ItemResult,
    Piece,
    RunStats,
    Window,
    WorkItem,
    group_by_decode,
    plan_items,
    split_into_items,
    window_audio,
    window_fill,
)
from services.transcription.splitting import (
    cut_short,
    repetitive,
    spans_callers,
    split_window,
    tails_of,
    text_ratio,
)
from services.transcription.whisper_adapter import (
    WindowDecoder,
    speech_clips,
    speech_spans,
    warm_up_vad,
)

__all__ = [
    "WhisperEngine",
    "find_items",
    "speech_spans",
]

log = get_logger(__name__)

FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)


def find_items(audio: Waveform, options: TranscriptionOptions) -> list[WorkItem]:
    """Step 1's model-free half: VAD finds the speech, cut into items of at most one window.

    The items decode with `options.decode` as asked until `WhisperEngine.settle` fixes the
    task and language (which may need the model). The bulk job runs this half in its CPU
    stage, apart from the model."""
    clips = speech_clips(audio, options.vad)
    items = split_into_items(clips, audio, options.decode, word_timestamps=options.word_timestamps)
    for item in items:
        item.logprobs = options.logprobs
    return items


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
        self._decoder = WindowDecoder(
            model_dir,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            beam_size=beam_size,
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
        return self._decoder.multilingual

    # -- step 1 -----------------------------------------------------------------------------

    def prepare(self, audio: Waveform, options: TranscriptionOptions) -> PreparedAudio:
        """Find the speech, cut it into window-sized items and settle the language."""
        items = find_items(audio, options)
        return self.settle(items, options, duration_s=audio.shape[0] / SAMPLE_RATE)

    def settle(
        self, items: list[WorkItem], options: TranscriptionOptions, *, duration_s: float
    ) -> PreparedAudio:
        """Step 1's model half: the task and language every item of one request decodes with.

        An English-only model only transcribes English; a multilingual one detects the
        language on the first item when none was given."""
        decode = options.decode
        language, probability = decode.language or "en", 1.0
        if not self.multilingual:
            # An English-only model cannot translate: translating English is transcribing.
            decode = replace(decode, task=Task.TRANSCRIBE, language="en")
            language = "en"
        elif decode.language is None and items:
            language, probability = self.detect_language(items[0].speech)
            decode = replace(decode, language=language)
        return PreparedAudio(
            items=[
                item if item.decode == decode else replace(item, decode=decode) for item in items
            ],
            language=language,
            language_probability=probability,
            duration_s=duration_s,
            options=options,
        )

    def detect_language(self, speech: Waveform) -> tuple[str, float]:
        return self._decoder.detect_language(speech)

    def language_probabilities(self, audio: Waveform) -> list[tuple[str, float]]:
        """`POST /v1/audio/language`: every language's probability, most likely first, from
        the first 30 s of speech (VAD drops silence first, as for transcription); the audio
        as it is when VAD hears no speech. Empty for an English-only model."""
        if not self.multilingual:
            return []
        clips = speech_clips(audio)
        speech = np.concatenate([audio[a:b] for a, b in clips]) if clips else audio
        return self._decoder.language_probabilities(speech)

    # -- step 2: the batch function ------------------------------------------------------

    def run(self, items: Sequence[WorkItem], *, pack: bool | None = None) -> list[ItemResult]:
        """Transcribe a batch of items from any number of requests; one result per item."""
        pack = self.pack_across_requests if pack is None else pack
        results: list[ItemResult] = [[] for _ in items]
        stats = self.last_run = RunStats()
        for decode, indices in group_by_decode(items).items():
            group = [items[i] for i in indices]
            windows = plan_items(group, pack=pack)
            stats.windows += len(windows)
            stats.speech_s += window_fill([i.samples for i in group], windows) * len(windows)
            group_results: list[ItemResult] = [[] for _ in group]
            short: set[int] = set()
            self._decode_all(group, windows, decode, group_results, short)
            self._decode_tails(group, decode, group_results, short, pack=pack)
            for index, result in zip(indices, group_results, strict=True):
                results[index] = result
        add_logprobs(self._decoder, items, results, batch_size=self.decode_batch_size)
        return results

    def _decode_all(
        self,
        group: Sequence[WorkItem],
        windows: list[Window],
        decode: DecodeOptions,
        out: list[ItemResult],
        short: set[int],
    ) -> None:
        for start in range(0, len(windows), self.decode_batch_size):
            chunk = windows[start : start + self.decode_batch_size]
            self._decode_isolating_failures(group, chunk, decode, out, short)

    def _decode_tails(
        self,
        group: Sequence[WorkItem],
        decode: DecodeOptions,
        out: list[ItemResult],
        short: set[int],
        *,
        pack: bool,
        last: bool = False,
    ) -> None:
        """Decode again what the model stopped short of, and append it to what it heard.

        Whisper sometimes ends a window's output before its last utterance (measured on long
        recordings: whole sentences lost at the end of 18-29 s items); alone, the next window
        would pick it up, but an item has no next window. So each item's unheard pieces
        (`splitting.tail_of`: the item's `short` ones, cut short in a shared window, and any
        whose last pieces went unheard) become items of their own, all decoded together in
        one pass packed like any batch (they are mostly a few seconds long). A tail the model
        stops short of again has its own unheard part decoded once more, alone; no further.
        """
        tails = tails_of(group, out, short)
        if not tails:
            return
        order = sorted(tails)
        items = [tails[i].item for i in order]
        again: list[ItemResult] = [[] for _ in items]
        again_short: set[int] = set()
        windows = plan_items(items, pack=pack and not last)
        self.last_run.retried += len(items)
        self.last_run.retry_windows += len(windows)
        self._decode_all(items, windows, decode, again, again_short)
        if not last:
            self._decode_tails(items, decode, again, again_short, pack=False, last=True)
        for i, result in zip(order, again, strict=True):
            out[i] = tails[i].merged(out[i], result)

    def _decode_isolating_failures(
        self,
        group: Sequence[WorkItem],
        windows: list[Window],
        decode: DecodeOptions,
        out: list[ItemResult],
        short: set[int],
    ) -> None:
        """Decode `windows`; if that fails, retry smaller so one bad item fails alone.

        Items of a shared window the model stopped short of go to `short` (`_decode_tails`
        decodes their unheard part again); one that loops is decoded again alone at once.
        """
        try:
            per_window = self._decode_windows(group, windows, decode)
            retry: list[Window] = []
            for window, segments in zip(windows, per_window, strict=True):
                split = split_window(window, group, segments, tokenize=self._tokenize)
                redo: set[int] = set()
                for item_index, item_segments in split.items():
                    out[item_index] = item_segments
                    if len(window.placements) > 1 and repetitive(item_segments):
                        redo.add(item_index)  # a loop: decoded alone, it may fall back
                short.update(i for i in cut_short(window, group, segments) if i not in redo)
                for item_index in sorted(redo):
                    alone = Window()
                    alone.add(item_index, group[item_index].samples)
                    retry.append(alone)
        except Exception as exc:
            if len(windows) > 1:
                for window in windows:
                    self._decode_isolating_failures(group, [window], decode, out, short)
                return
            (window,) = windows
            if len(window.placements) > 1:
                for placement in window.placements:
                    alone = Window()
                    alone.add(placement.item, group[placement.item].samples)
                    self._decode_isolating_failures(group, [alone], decode, out, short)
                return
            log.warning("work_item_failed", error=repr(exc), exc_info=exc)
            out[window.placements[0].item] = exc
            return
        if retry:
            self.last_run.retried += len(retry)
            self.last_run.retry_windows += len(retry)
            self._decode_isolating_failures(group, retry, decode, out, short)

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
            if len(windows[k].placements) == 1 and repetitive(segments)
        ]
        for temperature in FALLBACK_TEMPERATURES:
            if not looping or temperature <= decode.temperature:
                continue
            self.last_run.fallbacks += len(looping)
            hotter = replace(decode, temperature=temperature)
            retried = self._decode_once(group, [windows[k] for k in looping], hotter)
            for k, segments in zip(looping, retried, strict=True):
                if text_ratio(segments) < text_ratio(results[k]):
                    results[k] = segments
            looping = [k for k in looping if repetitive(results[k])]
        return results

    def _decode_once(
        self, group: Sequence[WorkItem], windows: list[Window], decode: DecodeOptions
    ) -> list[list[Segment]]:
        """Run the model on whole windows; segments come back in window-local seconds.

        Words are aligned only where needed: an item asked for them, or a segment runs
        across two callers of a shared window (measured: 1 segment in 31).
        """

        def needs_words(k: int, segments: list[Segment]) -> bool:
            window = windows[k]
            return any(group[p.item].word_timestamps for p in window.placements) or (
                spans_callers(window, group, segments)
            )

        audios = [window_audio(group, window) for window in windows]
        return self._decoder.decode(audios, decode, needs_words=needs_words)

    def _tokenize(self, text: str) -> list[int]:
        return self._decoder.tokenize(text)

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
        warm_up_vad()
        item = WorkItem(
            speech=tone,
            pieces=[Piece(item_offset=0, source_start=0, length=tone.shape[0])],
            decode=DecodeOptions(language="en"),
        )
        (result,) = self.run([item])
        if isinstance(result, Exception):
            raise RuntimeError("the warm-up transcription failed") from result
