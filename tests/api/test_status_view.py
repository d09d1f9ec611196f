"""The status a client sees follows the SharpJob contract: ``finished`` and the end of an event
stream are the contract's terminal phases (no cluster needed)."""

from __future__ import annotations

import pytest
from sharpml_api import events
from sharpml_api.models import JobStatus, Links

from sharpml.contract import TERMINAL, Phase

LINKS = Links.of("http://api.test", "j")


def _job(phase: Phase | None) -> dict:
    status = {"phase": str(phase)} if phase else {}
    return {
        "metadata": {"name": "j", "resourceVersion": "7"},
        "spec": {"owner": "a", "source": {"upload": {"jobDir": "jobs/j", "imageCount": 5}}},
        "status": status,
    }


@pytest.mark.parametrize("phase", list(Phase))
def test_finished_is_the_contracts_terminal_set(phase):
    view = JobStatus.from_resource(_job(phase), LINKS)
    assert view.phase == phase and view.finished is (phase in TERMINAL)
    assert view.processing.max_image_size == 1600  # the contract's default where the spec has none


def test_a_job_not_yet_seen_is_pending():
    view = JobStatus.from_resource(_job(None), LINKS)
    assert view.phase == Phase.PENDING and not view.finished and view.message is None


@pytest.mark.anyio
@pytest.mark.parametrize("phase", sorted(TERMINAL))
async def test_event_stream_of_a_finished_job_is_its_status_once(phase, anyio_backend):
    # No cluster: a stream that tried to watch would fail on None.
    stream = events.status_stream(None, _job(phase), lambda o: JobStatus.from_resource(o, LINKS), 1)
    chunks = [c async for c in stream]
    assert len(chunks) == 1 and "event: status" in chunks[0] and f'"phase":"{phase}"' in chunks[0]
