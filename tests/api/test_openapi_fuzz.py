"""schemathesis against the app's own OpenAPI document: generated requests for every operation, run
through the real app and the real control plane. No 5xx, and every response matches the schema
(status, content type, headers, body).

In the suite the run is **deterministic**: Hypothesis is derandomized (its seed comes from the test
itself) and has no example database, so every run sends the same requests and CI never passes or
fails by luck. ``make fuzz`` runs the same test far longer: ``SHARPML_FUZZ_EXAMPLES`` examples per
operation, seeded by ``SHARPML_FUZZ_SEED`` (random when unset, and printed, so that any failure can
be replayed with that seed).

The by-id operations reach real jobs too: about half of the generated job ids are replaced by the id
of a finished SharpJob of the caller (a fresh one for each DELETE), so the 200/202/204 answers and
their bodies are checked as well as the 404s. That job is Complete with its artifacts on the data
volume, so downloads answer 200/206/304/416 with generated Range and If-None-Match headers, and the
generated exp/kid/sig of signed links are refused (403) without a 5xx.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import zlib

import hypothesis
import kubernetes
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sharpml_api.app import create_app
from sharpml_api.settings import RateLimits, Settings

from sharpml.contract import GROUP, KIND, OWNER_LABEL, PLURAL, VERSION, owner_label
from sharpml.contract.delivery import ARTIFACTS
from tests.api.conftest import bearer

pytestmark = [pytest.mark.cluster]

ACCOUNT = "acct-fuzz"
#: Examples generated per operation, besides schemathesis' explicit and coverage cases. Bounded so
#: the suite stays quick on two cores; ``make fuzz`` raises it.
MAX_EXAMPLES = int(os.environ.get("SHARPML_FUZZ_EXAMPLES", "40"))
SEED = os.environ.get("SHARPML_FUZZ_SEED")
#: When set, one line per request sent (operation, status, the case's id) is appended to this file.
LOG = os.environ.get("SHARPML_FUZZ_LOG")


# The document does not depend on settings, so it is read once from an app that talks to nothing;
# each generated request goes to an app wired to this test's namespace and data directory.
# (schemathesis.pytest.from_fixture would do this lazily but does not work with pytest 9.)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(Settings(), kubernetes.client.ApiClient())
)


@pytest.fixture
def app(settings_for):
    # No per-address limit, and account limits a long run takes hours to reach: the requests are
    # spent on the API, not on 429s (which tests/api/test_rate_limits.py covers).
    return create_app(settings_for(rate_limits=RateLimits(0, 5000, 5000)))


class Jobs:
    """Finished SharpJobs of :data:`ACCOUNT` in the test's namespace, made as the operator leaves them."""

    def __init__(self, settings: Settings) -> None:
        client = kubernetes.config.new_client_from_config(config_file=settings.kubeconfig)
        self.api = kubernetes.client.CustomObjectsApi(client)
        self.namespace = settings.namespace
        self.data_dir = settings.data_dir
        self.finished = self.make()

    def make(self) -> str:
        name = str(uuid.uuid4())
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "labels": {OWNER_LABEL: owner_label(ACCOUNT)}},
            "spec": {"owner": ACCOUNT, "source": {"upload": {"jobDir": f"jobs/{name}", "imageCount": 5}}},
        }
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        status = {
            "phase": "Complete",
            "message": "done",
            "progress": {"percent": 100, "stage": "delivered"},
            "timestamps": {"finishedAt": "2026-01-01T00:00:00Z"},
            "sfm": {"registeredImages": 5, "totalImages": 5, "points": 1200, "meanReprojectionError": 0.6},
            "outputs": {
                "source": "trained",
                "deliveredAt": "2026-01-01T00:00:00Z",
                "expiresAt": "2099-01-01T00:00:00Z",
                "artifacts": [self._deliver(name, a.format) for a in ARTIFACTS.values()],
            },
        }
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, name, {"status": status}
        )
        return name

    def _deliver(self, name: str, fmt: str) -> dict:
        """An artifact on the data volume as the Delivering stage leaves it, and its status entry."""
        data = f"{fmt} of {name}\n".encode() * 100
        path = self.data_dir / ARTIFACTS[fmt].local_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        artifact = ARTIFACTS[fmt]
        return {"format": fmt, "file": artifact.filename, "bytes": len(data), "sha256": digest,
                "path": artifact.local_name(name)}  # fmt: skip


@pytest.fixture
def jobs(settings: Settings) -> Jobs:
    return Jobs(settings)


def _reaches_a_job(generated: str) -> bool:
    """Half of the generated ids, chosen by their content (so the choice is as deterministic as they are)."""
    return zlib.crc32(generated.encode("utf-8", "surrogatepass")) % 2 == 0


def _conforms(case, app, settings, jobs):
    path = case.path_parameters or {}
    if "job_id" in path and _reaches_a_job(str(path["job_id"])):
        path["job_id"] = jobs.make() if case.method.upper() == "DELETE" else jobs.finished
    # Generated "photos" are random bytes: schema-valid, never valid photos, so intake's 422 is the
    # right answer and "positive data must be accepted" cannot hold for uploads.
    excluded = [positive_data_acceptance] if case.method.upper() == "POST" else []
    headers = bearer(ACCOUNT) if case.headers is None or "X-Job-Token" not in case.headers else {}
    response = case.call_and_validate(app=app, headers=headers, excluded_checks=excluded)
    if LOG:
        with open(LOG, "a") as log:
            log.write(f"{case.operation.label}\t{response.status_code}\t{case.id}\n")
    spool = settings.data_dir / "uploads"
    assert not spool.exists() or not list(spool.iterdir())


def test_app_conforms_to_its_schema(case, app, settings, jobs):
    _conforms(case, app, settings, jobs)


test_app_conforms_to_its_schema = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # no replay of examples saved by earlier local runs: the outcome depends on the code only
    derandomize=SEED is None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow],
)(test_app_conforms_to_its_schema)
if SEED is not None:
    test_app_conforms_to_its_schema = hypothesis.seed(int(SEED))(test_app_conforms_to_its_schema)
test_app_conforms_to_its_schema = schema.parametrize()(test_app_conforms_to_its_schema)
