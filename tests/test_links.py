"""Signed links: genuine ones pass until they expire, anything altered is refused, keys rotate."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from sharpml.links import LinkError, parse_keys, sign, url, verify

JOB = "0b8e3a36-5c1e-4a8f-9a51-3b1f7a1c2d4e"
OTHER = "7d1c2b3a-0000-4000-8000-000000000000"
OLD = "old:" + "o" * 32
NEW = "new:" + "n" * 32


def test_a_genuine_link_verifies_until_it_expires() -> None:
    keys = parse_keys(NEW)
    params = sign(keys, JOB, "scene.splat", 1_000)
    assert verify(keys, JOB, "scene.splat", params, now=999) == 1_000
    with pytest.raises(LinkError) as expired:
        verify(keys, JOB, "scene.splat", params, now=1_000)
    assert expired.value.status == 410 and "expired" in str(expired.value)


@pytest.mark.parametrize(
    "change",
    [
        {"exp": "2000"},  # a longer life
        {"sig": "A" * 43},
        {"kid": "other"},
        {"sig": ""},
        {"exp": "\u0661\u0660\u0660\u0660"},  # Arabic-Indic digits: isdigit() but not ASCII
    ],
)
def test_an_altered_link_is_refused_with_403_even_when_expired(change: dict[str, str]) -> None:
    keys = parse_keys(NEW)
    params = {**sign(keys, JOB, "scene.splat", 1_000), **change}
    for now in (0, 5_000):
        with pytest.raises(LinkError) as refused:
            verify(keys, JOB, "scene.splat", params, now=now)
        assert refused.value.status == 403


def test_a_link_grants_one_scope_of_one_job() -> None:
    keys = parse_keys(NEW)
    params = sign(keys, JOB, "scene.splat", 1_000)
    for job, scope in ((OTHER, "scene.splat"), (JOB, "scene.ply"), (JOB, "view")):
        with pytest.raises(LinkError):
            verify(keys, job, scope, params, now=0)


def test_keys_rotate_two_valid_at_once() -> None:
    before = sign(parse_keys(OLD), JOB, "view", 1_000)
    both = parse_keys(f"{NEW},{OLD}")
    assert verify(both, JOB, "view", before, now=0) == 1_000  # old links keep working
    assert sign(both, JOB, "view", 1_000)["kid"] == "new"  # new links use the first key
    with pytest.raises(LinkError):
        verify(parse_keys(NEW), JOB, "view", before, now=0)  # the old key retired


@pytest.mark.parametrize("raw", ["nocolon", "k:short", f"{NEW},{NEW}", "bad kid:" + "x" * 32])
def test_bad_keys_are_refused_naming_the_setting(raw: str) -> None:
    with pytest.raises(ValueError, match="SHARPML_LINK_KEYS"):
        parse_keys(raw)


def test_url_paths() -> None:
    keys = parse_keys(NEW)
    view = urlsplit(url("https://sharp.example/", JOB, "view", keys, 1_000))
    assert (view.netloc, view.path) == ("sharp.example", f"/v1/jobs/{JOB}/view")
    assert verify(keys, JOB, "view", dict(parse_qsl(view.query)), now=0) == 1_000
    art = urlsplit(url("https://sharp.example", JOB, "scene.spz", keys, 1_000))
    assert art.path == f"/v1/jobs/{JOB}/artifacts/scene.spz"


def test_settings_read_the_registry_and_name_a_bad_key() -> None:
    from sharpml.links import LinkSettings
    from sharpml.settings import ConfigError

    cfg = LinkSettings.from_env({"SHARPML_LINK_KEYS": NEW, "SHARPML_LINK_TTL_SECONDS": "600"})
    assert cfg.enabled and cfg.keys[0].kid == "new" and "nnnn" not in repr(cfg)
    assert cfg.expiry(now=1_000) == 1_600 and cfg.expiry(now=1_000, not_after=1_200) == 1_200
    assert not LinkSettings.from_env({}).enabled
    with pytest.raises(ConfigError, match="SHARPML_LINK_KEYS"):
        LinkSettings.from_env({"SHARPML_LINK_KEYS": "k:short"})
