"""A transcript as a stream: what the model replica sends while it works, and the text deltas
the API makes of it (`stream=true`).

The replica prepares a request as usual (VAD, items, language), sends `StreamStart`, then
one `ItemDone` per work item in time order as the items come out of the shared batches.
A streamed request does not queue all its items at once: `SubmissionRamp` lets one window's
worth of speech go first and doubles the allowance each time results come back, so the
first batch that holds this request is small and its first words come early, while later
batches fill up as usual (cross-request batching is unchanged: the items join the same
queue as everyone else's).

`DeltaBuilder` turns item results into OpenAI's `transcript.text.delta` pieces (one per
segment, the transcript's leading space dropped) and keeps what the final
`transcript.text.done` needs. Plain data, no model and no Ray: unit-tested directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from services.transcription.assembly import PreparedAudio, assemble
from services.transcription.domain import Segment, TokenLogprob, Transcript, TranscriptionOptions
from services.transcription.packing import SHARED_WINDOW_SAMPLES, ItemResult, WorkItem


@dataclass(frozen=True)
class StreamStart:
    """Sent once the request is prepared: what `assemble` needs besides the items."""

    language: str
    language_probability: float
    duration_s: float
    items: int | None = None
    """How many items follow, when known (the replica finds them while VAD goes on)."""


@dataclass(frozen=True)
class ItemDone:
    """One work item's segments, in the request's timeline (items arrive in time order)."""

    index: int
    segments: list[Segment]


StreamEvent = StreamStart | ItemDone


class SubmissionRamp:
    """Which of a streamed request's items may join the batch queue now.

    Starts with `first_samples` of speech (one shared window) and doubles after every
    return of results, up to `max_samples` in flight. At least one item is always allowed,
    so an item longer than the allowance still goes.
    """

    def __init__(self, items: Sequence[WorkItem], *, max_samples: int) -> None:
        self._sizes: list[int] = [item.samples for item in items]
        self._allowance = min(SHARED_WINDOW_SAMPLES, max_samples)
        self._max = max(max_samples, self._allowance)
        self._next = 0
        self._in_flight: dict[int, int] = {}

    def add(self, item: WorkItem) -> None:
        """One more item, after those known so far (items found while VAD goes on)."""
        self._sizes.append(item.samples)

    def take(self) -> list[int]:
        """Indices of the items to queue now (in order); call again after `returned`."""
        taken: list[int] = []
        while self._next < len(self._sizes):
            size = self._sizes[self._next]
            held = sum(self._in_flight.values())
            if self._in_flight and held + size > self._allowance:
                break
            self._in_flight[self._next] = size
            taken.append(self._next)
            self._next += 1
        return taken

    def returned(self, indices: Sequence[int]) -> None:
        """These items have their results: the allowance doubles (once per return)."""
        for index in indices:
            self._in_flight.pop(index, None)
        if indices:
            self._allowance = min(self._allowance * 2, self._max)


@dataclass(frozen=True)
class TextDelta:
    """`transcript.text.delta`: the next piece of the transcript, final."""

    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class TextDone:
    """`transcript.text.done`: the whole transcript (as the non-streamed answer has it)."""

    transcript: Transcript
    logprobs: list[TokenLogprob] | None = None


TranscriptEvent = TextDelta | TextDone


@dataclass
class DeltaBuilder:
    """Item results in, deltas out; `done()` assembles the transcript like `assemble` does."""

    start: StreamStart
    options: TranscriptionOptions
    _results: list[ItemResult] = field(default_factory=list)
    _started: bool = False

    def add(self, item: ItemDone) -> list[TextDelta]:
        self._results.append(item.segments)
        deltas = []
        for segment in sorted(item.segments, key=lambda s: s.start):
            text = segment.text if self._started else segment.text.lstrip()
            if not text:
                continue
            self._started = True
            logprobs = segment.logprobs if self.options.logprobs else None
            deltas.append(TextDelta(text, logprobs))
        return deltas

    def done(self) -> TextDone:
        prepared = PreparedAudio(
            items=[],
            language=self.start.language,
            language_probability=self.start.language_probability,
            duration_s=self.start.duration_s,
            options=self.options,
        )
        transcript = assemble(prepared, self._results)
        logprobs = None
        if self.options.logprobs:
            logprobs = [lp for segment in transcript.segments for lp in segment.logprobs]
        return TextDone(transcript, logprobs)


def stream_whole(transcript: Transcript, options: TranscriptionOptions) -> list[TranscriptEvent]:
    """A transcript known at once (the result cache) as the same events: one delta, done."""
    logprobs = (
        [lp for segment in transcript.segments for lp in segment.logprobs]
        if options.logprobs
        else None
    )
    events: list[TranscriptEvent] = []
    if transcript.text:
        events.append(TextDelta(transcript.text, logprobs))
    events.append(TextDone(transcript, logprobs))
    return events


Submit = Callable[[list[WorkItem]], list[Awaitable[ItemResult]]]
"""Queues items for the model; one awaitable result per item, in order."""


async def ramped_results(
    source: Sequence[WorkItem] | AsyncIterator[WorkItem], submit: Submit, *, max_samples: int
) -> AsyncIterator[ItemDone]:
    """Each item's result in item order, as soon as it and all before it are done; items are
    queued as the `SubmissionRamp` allows, also while `source` is still producing them. The
    first failed item's error is raised (or the source's). Leaving early (the client went
    away) cancels whatever is still queued and stops reading the source."""
    items: list[WorkItem] = []
    ramp = SubmissionRamp([], max_samples=max_samples)
    pending: dict[int, asyncio.Future[ItemResult]] = {}
    arrived = asyncio.Event()

    def queue_more() -> None:
        indices = ramp.take()
        if indices:
            awaitables = submit([items[i] for i in indices])
            for index, awaitable in zip(indices, awaitables, strict=True):
                pending[index] = asyncio.ensure_future(awaitable)

    async def pull() -> None:
        async for item in _aiter(source):
            items.append(item)
            ramp.add(item)
            queue_more()
            arrived.set()

    puller = asyncio.ensure_future(pull())
    next_out = 0
    try:
        while True:
            if next_out not in pending:
                if puller.done():
                    puller.result()  # the source's failure, if any
                    if next_out >= len(items):
                        break
                arrived.clear()
                waiter = asyncio.ensure_future(arrived.wait())
                await asyncio.wait([waiter, puller], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                continue
            await asyncio.wait([pending[next_out]])
            ready: list[tuple[int, ItemResult]] = []
            while next_out in pending and pending[next_out].done():
                ready.append((next_out, pending.pop(next_out).result()))
                next_out += 1
            ramp.returned([index for index, _ in ready])
            queue_more()
            for index, result in ready:
                if isinstance(result, Exception):
                    raise result
                yield ItemDone(index, result)
    finally:
        puller.cancel()
        for future in pending.values():
            future.cancel()


async def _aiter(source: Sequence[WorkItem] | AsyncIterator[WorkItem]) -> AsyncIterator[WorkItem]:
    if isinstance(source, Sequence):
        for item in source:
            yield item
    else:
        async for item in source:
            yield item
