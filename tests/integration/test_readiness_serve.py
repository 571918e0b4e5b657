"""/readyz on the real app: the model as Serve sees it, and prompt under a saturated queue."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import ENGLISH, report

pytestmark = pytest.mark.integration
BURST = 48  # past the model deployment's 32 ongoing requests: the rest wait in its queue


def test_readyz_answers_promptly_while_the_model_queue_is_saturated(
    serve_url: str, http: httpx.Client
) -> None:
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["model"] == "ok"
    clip = min(ENGLISH, key=lambda c: c.duration_s)
    audio = clip.path.read_bytes()

    def transcribe(_: int) -> int:
        with httpx.Client(base_url=serve_url, timeout=120) as client:
            response = client.post(
                "/v1/audio/transcriptions",
                files={"file": (clip.name, audio)},
                data={"model": "whisper-1"},
            )
        return response.status_code

    timings: list[float] = []
    with ThreadPoolExecutor(BURST) as pool:
        burst_started = time.monotonic()
        burst = [pool.submit(transcribe, i) for i in range(BURST)]
        time.sleep(1.0)  # let the burst reach the model's queue
        for _ in range(5):
            started = time.monotonic()
            probe = http.get("/readyz", timeout=10)
            timings.append(time.monotonic() - started)
            assert probe.status_code == 200, probe.text
            assert probe.json()["model"] == "ok"
            time.sleep(0.3)
        still_running = sum(not f.done() for f in burst)
        statuses = [f.result() for f in burst]
        burst_s = time.monotonic() - burst_started
    assert set(statuses) <= {200, 503}, statuses
    # A probe that queued behind the model would take about as long as the burst itself;
    # the ingress parsing 48 uploads at once may hold one probe a couple of seconds.
    assert max(timings) < min(5.0, burst_s / 2), (timings, burst_s)
    report(
        f"/readyz under a burst of {BURST} sync requests ({still_running} still in flight "
        f"after the probes, {burst_s:.1f} s in all): slowest {max(timings) * 1000:.0f} ms "
        f"of {len(timings)}"
    )
