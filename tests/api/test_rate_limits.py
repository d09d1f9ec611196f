"""Rate limits stored in cluster Leases: exact sliding windows, no over-admission under races, and one
count shared by every API process."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading

import httpx
import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException
from sharpml_api.ratelimit import HITS_ANNOTATION, LeaseRateLimiter, Limit, RateLimited
from sharpml_api.settings import RateLimits

from tests.api.conftest import asgi_client, bearer, left_behind, multipart, sharpjobs
from tests.api.test_uploads import assert_problem
from tests.core.photos import photo_set

pytestmark = [pytest.mark.cluster]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _limiter(control_plane, namespace: str, clock=None) -> LeaseRateLimiter:
    client = kubernetes.config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    return LeaseRateLimiter(client, namespace, **({"clock": clock} if clock else {}))


def test_sliding_window_retry_after_release_and_sweep(control_plane, namespace):
    clock = Clock()
    limiter = _limiter(control_plane, namespace, clock)
    limit = Limit("ip-hour", "198.51.100.23", 3, 3600, "uploads per hour")
    admitted = []
    for i in range(3):  # at t0, t0+10, t0+20
        clock.now += 10 if i else 0
        admitted.append(limiter.acquire(limit))
    clock.now += 10  # t0 + 30
    with pytest.raises(RateLimited) as refused:
        limiter.acquire(limit)
    assert refused.value.retry_after == 3600 - 30  # when the oldest admission leaves the window

    lease = control_plane.get_json("lease", limit.lease_name, "-n", namespace)
    assert len(json.loads(lease["metadata"]["annotations"][HITS_ANNOTATION])) == 3
    assert "198.51.100.23" not in json.dumps(lease)  # no client address is stored in the cluster

    limiter.release(admitted[-1])  # handed back: one slot is free again
    limiter.acquire(limit)
    with pytest.raises(RateLimited):
        limiter.acquire(limit)

    clock.now += 3600 - 30 + 1  # the first admission has left the window
    limiter.acquire(limit)
    assert limiter.sweep() == 0  # still in use
    clock.now += 3601
    assert limiter.sweep() == 1
    assert (
        control_plane.kubectl("get", "lease", limit.lease_name, "-n", namespace, check=False).returncode != 0
    )


def test_racing_replicas_never_admit_more_than_the_limit(control_plane, namespace):
    """Sixteen threads on two independent clients (two replicas) race for five slots."""
    limiters = [_limiter(control_plane, namespace), _limiter(control_plane, namespace)]
    limit = Limit("account-day", "acct-race", 5, 86400, "uploads per day")
    outcomes: list[str] = []
    barrier = threading.Barrier(16)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            limiters[i % 2].acquire(limit)
            outcomes.append("admitted")
        except RateLimited:
            outcomes.append("refused")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("admitted") == 5 and outcomes.count("refused") == 11


def test_acquire_all_hands_back_on_refusal(control_plane, namespace):
    limiter = _limiter(control_plane, namespace)
    ip = Limit("ip-hour", "192.0.2.1", 5, 3600, "per hour")
    account = Limit("account-day", "acct-full", 1, 86400, "per day")
    limiter.acquire_all([ip, account])
    with pytest.raises(RateLimited) as refused:
        limiter.acquire_all([ip, account])
    assert refused.value.limit == account
    lease = control_plane.get_json("lease", ip.lease_name, "-n", namespace)
    assert len(json.loads(lease["metadata"]["annotations"][HITS_ANNOTATION])) == 1  # the IP slot came back


@pytest.mark.anyio
async def test_upload_limits_per_ip_account_and_anonymous(settings_for, control_plane, namespace, tmp_path):
    few = multipart(photo_set(tmp_path, 2))  # rejected by intake: cheap, and attempts count
    settings = settings_for(
        rate_limits=RateLimits(per_ip_per_hour=2, per_account_per_day=3, anonymous_per_ip_per_day=1)
    )
    async with asgi_client(settings) as api:
        for _ in range(2):
            assert (await api.post("/v1/jobs", headers=bearer("acct-1"), **few)).status_code == 422
        resp = await api.post("/v1/jobs", headers=bearer("acct-1"), **few)
        body = assert_problem(resp, 429, "rate-limited", "rate-limit")
        assert body["errors"][0]["field"] == "ip-hour"
        assert 3590 <= int(resp.headers["retry-after"]) <= 3600
        assert "uploads per hour from this address" in body["detail"]
    async with asgi_client(settings, client_ip="198.51.100.2") as api:
        assert (await api.post("/v1/jobs", headers=bearer("acct-1"), **few)).status_code == 422
        resp = await api.post("/v1/jobs", headers=bearer("acct-1"), **few)  # 4th of acct-1 today
        body = assert_problem(resp, 429, "rate-limited")
        assert body["errors"][0]["field"] == "account-day" and int(resp.headers["retry-after"]) > 86000
    async with asgi_client(settings, client_ip="198.51.100.3") as api:
        assert (await api.post("/v1/jobs", **few)).status_code == 422  # anonymous: own quota
        resp = await api.post("/v1/jobs", **few)
        assert assert_problem(resp, 429, "rate-limited")["errors"][0]["field"] == "anon-ip-day"
    no_anonymous = settings_for(rate_limits=RateLimits(anonymous_per_ip_per_day=0))
    async with asgi_client(no_anonymous) as api:
        resp = await api.post("/v1/jobs", **few)
        assert "anonymous uploads are disabled" in assert_problem(resp, 401, "unauthorized")["detail"]
    assert left_behind(settings) == [] and sharpjobs(control_plane, namespace) == []


@pytest.mark.anyio
async def test_forwarded_for_is_believed_only_from_trusted_proxies(settings_for, tmp_path):
    few = multipart(photo_set(tmp_path, 2))
    settings = settings_for(
        rate_limits=RateLimits(per_ip_per_hour=1, per_account_per_day=0),
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
    )

    async def post(api: httpx.AsyncClient, xff: str) -> int:
        return (await api.post("/v1/jobs", headers={**bearer(), "X-Forwarded-For": xff}, **few)).status_code

    async with asgi_client(settings, client_ip="10.1.2.3") as behind_proxy:
        assert await post(behind_proxy, "1.1.1.1, 198.51.100.7, 10.9.9.9") == 422
        assert await post(behind_proxy, "2.2.2.2, 198.51.100.7") == 429  # same client, spoofed left part
        assert await post(behind_proxy, "198.51.100.8") == 422  # another client behind the proxy
    async with asgi_client(settings, client_ip="203.0.113.50") as direct:
        assert await post(direct, "198.51.100.9") == 422
        assert await post(direct, "198.51.100.10") == 429  # not a proxy: the header is ignored


@pytest.mark.anyio
async def test_failures_on_our_side_do_not_use_up_the_quota(settings_for, tmp_path):
    settings = settings_for(rate_limits=RateLimits(per_ip_per_hour=1, per_account_per_day=0))
    photos = multipart(photo_set(tmp_path))
    async with asgi_client(settings) as api:
        cluster = api._transport.app.state.sharpml.cluster  # type: ignore[attr-defined]
        real_create = cluster.create_job

        def failing_create(body):
            raise ApiException(status=500, reason="etcdserver: request timed out")

        cluster.create_job = failing_create
        assert_problem(await api.post("/v1/jobs", headers=bearer(), **photos), 503, "cluster-unavailable")
        assert left_behind(settings) == []
        cluster.create_job = real_create
        assert (await api.post("/v1/jobs", headers=bearer(), **photos)).status_code == 201


def test_limits_hold_across_two_api_processes(settings_for, serve_api, tmp_path):
    """Two `sharpml-api` processes (two replicas) share one count, sequentially and under a race."""
    settings = settings_for(rate_limits=RateLimits(per_ip_per_hour=3, per_account_per_day=4))
    a, b = serve_api(settings), serve_api(settings)
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photo_set(tmp_path, 2)]

    def post(url: str, account: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/jobs", headers=bearer(account), files=files, timeout=60)

    assert [post(u, "acct-seq").status_code for u in (a.url, b.url, a.url)] == [422, 422, 422]
    refused = post(b.url, "acct-seq")
    assert refused.status_code == 429 and 3590 <= int(refused.headers["retry-after"]) <= 3600

    # A fresh account from other addresses is impossible over loopback, so race the account limit
    # with the IP limit lifted: 10 uploads at once, alternating between the two processes.
    settings2 = settings_for(rate_limits=RateLimits(per_ip_per_hour=0, per_account_per_day=4))
    c, d = serve_api(settings2), serve_api(settings2)

    async def race() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            reqs = [
                client.post(f"{(c, d)[i % 2].url}/v1/jobs", headers=bearer("acct-race"), files=files)
                for i in range(10)
            ]
            return [r.status_code for r in await asyncio.gather(*reqs)]

    codes = asyncio.run(race())
    assert sorted(codes) == [422] * 4 + [429] * 6, codes
