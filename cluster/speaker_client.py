"""`ServeDiarizer`: the services' `SpeakerLabeller` over a handle to the `SpeakerDiarizer`
deployment (deployments/diarizer.py). Here, not beside the deployment, because both edges
use it: the ingress for synchronous `diarized_json`, the job tracker for diarized jobs (and
`cluster/` never imports `deployments/`)."""

from __future__ import annotations

from typing import Any

from ray.serve.handle import DeploymentHandle

from cluster.whisper_client import serve_call_errors
from services.diarization.pipeline import Turn, turns_of_rows
from services.transcription.domain import Waveform


class ServeDiarizer:
    """A full queue or a replica lost mid-request is 503, as for the Whisper deployment."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def diarize(
        self,
        audio: Waveform,
        num_speakers: int | None,
        references: list[tuple[str, Waveform]],
    ) -> list[Turn]:
        with serve_call_errors("speaker-labelling"):
            turns: list[dict[str, Any]] = await self._handle.diarize.remote(
                audio, num_speakers, references
            )
        return turns_of_rows(turns)
