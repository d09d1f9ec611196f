"""schemathesis against the app's own OpenAPI document: generated requests for every operation, run
through the real app and the real control plane. No 5xx, and every response matches the schema
(status, content type, headers, body)."""

from __future__ import annotations

import hypothesis
import kubernetes
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sharpml_api.app import create_app
from sharpml_api.settings import Settings

from tests.api.conftest import bearer

pytestmark = [pytest.mark.cluster]

#: Bounded so the suite stays quick on two cores; raise locally with SHARPML_FUZZ_EXAMPLES.
MAX_EXAMPLES = 30


# The document does not depend on settings, so it is read once from an app that talks to nothing;
# each generated request goes to an app wired to this test's namespace and data directory.
# (schemathesis.pytest.from_fixture would do this lazily but does not work with pytest 9.)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(Settings(), kubernetes.client.ApiClient())
)


@pytest.fixture
def app(settings: Settings):
    return create_app(settings)


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow],
)
def test_app_conforms_to_its_schema(case, app, settings):
    # Generated "photos" are random bytes: schema-valid, never valid photos, so intake's 422 is the
    # right answer and "positive data must be accepted" cannot hold for uploads.
    excluded = [positive_data_acceptance] if case.operation.method.upper() == "POST" else []
    headers = bearer("acct-fuzz") if case.headers is None or "X-Job-Token" not in case.headers else {}
    case.call_and_validate(app=app, headers=headers, excluded_checks=excluded)
    spool = settings.data_dir / "uploads"
    assert not spool.exists() or not list(spool.iterdir())
