"""The operator's S3 settings (SHARPML_S3_*): defaults, normalisation and refusals. No server needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sharpml_operator.settings import Settings

from sharpml.settings import ConfigError
from sharpml.storage import S3Settings


def test_defaults_mean_aws_and_the_default_credential_chain() -> None:
    s3 = Settings.from_env({}).s3
    assert s3 == S3Settings(
        endpoint="",
        region="us-east-1",
        bucket="sharpml",
        prefix="sharpml/",
        access_key_id="",
        secret_access_key="",
        ca_bundle=None,
    )


def test_values_are_normalised() -> None:
    s3 = S3Settings.from_env(
        {
            "SHARPML_S3_ENDPOINT": "https://s3.example:9000/",
            "SHARPML_S3_PREFIX": "/team/sharpml",
            "SHARPML_S3_ACCESS_KEY_ID": "id",
            "SHARPML_S3_SECRET_ACCESS_KEY": "very-secret",
            "SHARPML_S3_CA_BUNDLE": "/etc/ca.pem",
        }
    )
    assert (s3.endpoint, s3.prefix, s3.ca_bundle) == (
        "https://s3.example:9000",
        "team/sharpml/",
        Path("/etc/ca.pem"),
    )
    assert "very-secret" not in repr(s3) and "very-secret" not in repr(Settings.from_env({}))
    assert S3Settings.from_env({"SHARPML_S3_PREFIX": "/"}).prefix == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SHARPML_S3_ENDPOINT": "s3.example:9000"}, "SHARPML_S3_ENDPOINT='s3.example:9000': must be http"),
        ({"SHARPML_S3_ENDPOINT": "https://s3.example/bucket"}, "must be http"),
        ({"SHARPML_S3_ACCESS_KEY_ID": "id"}, "set both, or neither"),
        ({"SHARPML_S3_SECRET_ACCESS_KEY": "secret"}, "set both, or neither"),
    ],
)
def test_unusable_values_stop_start_up_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
