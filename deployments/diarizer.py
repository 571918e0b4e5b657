"""`SpeakerDiarizer`: speaker labels beside the Whisper replicas (CPU, experimental).

Its own deployment so that diarization runs in parallel with transcription rather than
inside a Whisper replica's batch loop. Built only when `RAYSCRIBE_DIARIZATION__ENABLED=true`
and the `rayscribe[diarization]` extra is installed (torch, the encoder weights, scikit-learn).
The ingress (synchronous transcriptions) and the job tracker (diarized jobs) reach it
through `ServeDiarizer` (cluster/speaker_client.py), the services' `SpeakerLabeller` over
its handle, for `response_format=diarized_json`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from ray import serve

from cluster.speaker_client import ServeDiarizer
from services.core.logging import configure_logging, get_logger
from services.core.settings import Settings
from services.diarization.pipeline import Diarizer, Reference, turns_to_rows

log = get_logger(__name__)

__all__ = ["DEPLOYMENT_NAME", "ServeDiarizer", "SpeakerDiarizer"]

DEPLOYMENT_NAME = "SpeakerDiarizer"
NUM_CPUS = 0.0
"""What the deployment reserves by default: nothing, so that enabling speaker labels never
leaves it pending on a node whose logical CPUs the shipped entries already hold (the dev
config's Ingress, Whisper replica and tracker take all 2). It is idle between diarized
requests and shares the cores with Whisper when busy; on a real cluster give it an entry
named `SpeakerDiarizer` with a share of its own (serve_config.yaml shows one)."""


@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=8,
    ray_actor_options={"num_cpus": NUM_CPUS, "num_gpus": 0},
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class SpeakerDiarizer:
    def __init__(self, settings: Settings) -> None:
        configure_logging(settings.logging.level)
        self._diarizer = Diarizer()
        # torch already spreads one file over the replica's threads: one file at a time.
        self._lock = threading.Lock()

    def _run(
        self,
        audio: np.ndarray,
        num_speakers: int | None,
        references: list[tuple[str, np.ndarray]],
        abandoned: threading.Event,
    ) -> list[dict[str, Any]]:
        with self._lock:
            if abandoned.is_set():  # its caller went away while it waited for the lock
                return []
            turns = self._diarizer.diarize(
                audio.astype(np.float32, copy=False),
                num_speakers=num_speakers,
                references=[Reference(name, clip) for name, clip in references],
            )
        return turns_to_rows(turns)

    async def diarize(
        self,
        audio: np.ndarray,
        num_speakers: int | None = None,
        references: list[tuple[str, np.ndarray]] | None = None,
    ) -> list[dict[str, Any]]:
        """Speaker turns (`start`, `end` in seconds, `speaker`) of 16 kHz mono audio.

        A cancelled call (the client went away) cannot stop its thread, but one still
        waiting for the lock then returns at once instead of diarizing for nobody."""
        abandoned = threading.Event()
        try:
            return await asyncio.to_thread(
                self._run, audio, num_speakers, references or [], abandoned
            )
        except asyncio.CancelledError:
            abandoned.set()
            raise
