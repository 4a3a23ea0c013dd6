"""A real S3-compatible server for the object-store tests: moto's, over HTTP on localhost.

Clients find it the standard way, as a user's would find theirs: ``AWS_ENDPOINT_URL`` and the
``AWS_*`` credentials in the environment (which processes started by the tests inherit)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "tracespec-test",
    "AWS_SECRET_ACCESS_KEY": "tracespec-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server started for this test session, set as ``AWS_ENDPOINT_URL``."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {key: os.environ.get(key) for key in (*S3_ENVIRONMENT, "AWS_ENDPOINT_URL")}
    os.environ.update({**S3_ENVIRONMENT, "AWS_ENDPOINT_URL": endpoint})
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A new, empty bucket: ``s3://<name>``."""
    import boto3

    name = f"traces-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"
