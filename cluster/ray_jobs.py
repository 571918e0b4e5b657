"""`RayJobsClient`: the batches service's way into Ray's Jobs API (the `RayJobs` seam).

It wraps `ray.job_submission.JobSubmissionClient` against the cluster's dashboard address,
sending Ray's auth token (`bulk.ray_token`) as a bearer header: only the service holds it,
clients of the batches API never reach Ray. Ray's client checks the cluster when it is
built, so it is built on first use and again after a failure. Every failure to reach the
cluster or have a call accepted becomes `RayJobsError`; a job Ray does not know is `None`.
"""

from __future__ import annotations

import threading
from typing import Any

from pydantic import SecretStr

from services.bulk.batches_errors import RayJobsError
from services.bulk.batches_ray import RayJobInfo, RayJobSpec, RayJobStatus

NOT_FOUND = "status code 404"


class RayJobsClient:
    def __init__(self, address: str, token: SecretStr | None) -> None:
        self._address = address
        self._token = token
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the token
        return f"RayJobsClient({self._address!r})"

    def _jobs(self) -> Any:
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                headers = {}
                if self._token is not None:
                    headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
                try:
                    self._client = JobSubmissionClient(self._address, headers=headers)
                except Exception as exc:
                    raise RayJobsError(f"Ray at {self._address} is unreachable: {exc}") from exc
            return self._client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self._jobs()
        try:
            return getattr(client, method)(*args, **kwargs)
        except Exception as exc:
            if NOT_FOUND in str(exc):
                raise LookupError(str(exc)) from exc
            with self._lock:
                self._client = None  # rebuilt (and the cluster checked) on the next call
            raise RayJobsError(f"Ray's Jobs API refused {method}: {exc}") from exc

    def submit(self, spec: RayJobSpec) -> str:
        job_id: str = self._call(
            "submit_job",
            entrypoint=spec.entrypoint,
            submission_id=spec.submission_id,
            runtime_env={"env_vars": spec.env_vars},
            metadata=spec.metadata,
        )
        return job_id

    def info(self, submission_id: str) -> RayJobInfo | None:
        try:
            details = self._call("get_job_info", submission_id)
        except LookupError:
            return None
        status = RayJobStatus(str(getattr(details.status, "value", details.status)))
        return RayJobInfo(status=status, message=details.message)

    def stop(self, submission_id: str) -> None:
        try:
            self._call("stop_job", submission_id)
        except LookupError:
            return

    def logs(self, submission_id: str) -> str:
        try:
            text: str = self._call("get_job_logs", submission_id)
        except LookupError:
            return ""
        return text
