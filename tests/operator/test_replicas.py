"""Two operator replicas: only the one holding the Lease acts; the standby takes over when it dies."""

from __future__ import annotations

import time

import pytest

from tests.operator.conftest import create, sharpjob, wait_phase

pytestmark = [pytest.mark.cluster]


def _holder(cp, ns):
    return cp.get_json("lease", "sharpml-operator", "-n", ns)["spec"]["holderIdentity"]


def test_only_the_lease_holder_acts_and_a_standby_takes_over(control_plane, namespace, start_operator):
    cp, ns = control_plane, namespace
    election = ("--leader-election", f"--lease-namespace={ns}", "--lease-duration=4")
    first = start_operator(*election)
    deadline = time.monotonic() + 30
    while cp.kubectl("get", "lease", "sharpml-operator", "-n", ns, check=False).returncode:
        assert time.monotonic() < deadline, first.log()
        time.sleep(0.2)
    second = start_operator(*election)
    time.sleep(3)
    assert "waiting to lead" in second.log() and "leading as" not in second.log()
    leader = _holder(cp, ns)

    # A job without photos fails at once: enough to see which replica handled it.
    create(cp, ns, sharpjob("one", "jobs/one", 8))
    wait_phase(cp, ns, "one", "Failed", operator=first)
    assert "/one: Failed" in first.log() and "/one:" not in second.log()

    first.kill()
    deadline = time.monotonic() + 30
    while _holder(cp, ns) == leader:
        assert time.monotonic() < deadline, second.log()
        time.sleep(0.3)
    create(cp, ns, sharpjob("two", "jobs/two", 8))
    wait_phase(cp, ns, "two", "Failed", operator=second)
    assert "/two: Failed" in second.log()
