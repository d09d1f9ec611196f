"""RunPod serverless, as the Training stage calls it: the ``runpod`` SDK's own client, with its
errors sorted into what the stage does about them.

The SDK's ``Endpoint``/``Job`` keep only a job's status word and output; the stage needs the whole
``/status`` record (``executionTime`` is the billing figure), so it calls the SDK's ``RunPodClient``
on the documented paths. ``RUNPOD_ENDPOINT_BASE_URL`` (read by the SDK at import) points it at
another RunPod, such as the tests' local one.
"""

from __future__ import annotations

from typing import Any

import requests

#: The job states RunPod documents; the last four are final.
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
STATES = frozenset({"IN_QUEUE", "IN_PROGRESS"}) | FINAL


class RunPodUnavailable(Exception):
    """RunPod did not answer usefully (connection error, timeout, 429, 5xx): try again later."""


class RunPodRefused(Exception):
    """RunPod refused the call for a reason retrying will not fix (bad key, unknown endpoint, 4xx)."""


class RunPod:
    """One serverless endpoint."""

    def __init__(self, endpoint_id: str, api_key: str, timeout: float = 10.0) -> None:
        from runpod.endpoint.runner import RunPodClient  # the SDK imports a lot: only when training

        self.endpoint_id = endpoint_id
        self.timeout = timeout
        self._client = RunPodClient(api_key=api_key)

    def run(self, job_input: dict[str, Any], *, execution_timeout_ms: int, ttl_ms: int) -> str:
        """Submit a job (``/run``); its RunPod id."""
        body = {"input": job_input, "policy": {"executionTimeout": execution_timeout_ms, "ttl": ttl_ms}}
        answer = self._call("post", f"{self.endpoint_id}/run", body)
        job_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(job_id, str) or not job_id or len(job_id) > 128:
            raise RunPodUnavailable(f"/run answered without a job id: {str(answer)[:200]}")
        return job_id

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's ``/status`` record, or None when RunPod no longer knows it (ttl passed, purged)."""
        try:
            answer = self._call("get", f"{self.endpoint_id}/status/{job_id}")
        except RunPodRefused as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise
        if not isinstance(answer, dict) or answer.get("status") not in STATES:
            raise RunPodUnavailable(f"/status/{job_id} answered an unknown record: {str(answer)[:200]}")
        return answer

    def cancel(self, job_id: str) -> None:
        """Ask RunPod to cancel the job (a finished or unknown job: nothing to do)."""
        try:
            self._call("post", f"{self.endpoint_id}/cancel/{job_id}")
        except RunPodRefused as exc:
            if getattr(exc, "status", None) != 404:
                raise

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            if method == "post":
                return self._client.post(path, body or {}, timeout=int(self.timeout))
            return self._client.get(path, timeout=int(self.timeout))
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code == 429 or code >= 500 or code == 408:
                raise RunPodUnavailable(f"RunPod answered HTTP {code} on {path}") from None
            refused = RunPodRefused(f"RunPod refused {path}: HTTP {code}")
            refused.status = code  # type: ignore[attr-defined]
            raise refused from None
        except RuntimeError as exc:  # the SDK's 401: "Unauthorized request, please check your API key."
            raise RunPodRefused(f"RunPod refused {path}: {exc}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RunPodUnavailable(f"RunPod unreachable on {path}: {type(exc).__name__}") from None
        except (requests.RequestException, ValueError) as exc:  # ValueError: a body that is not JSON
            raise RunPodUnavailable(f"RunPod call {path} failed: {exc}"[:300]) from None
