"""Real servers for a lake past one machine: PostgreSQL (the ``pgserver`` wheel's binaries) as DuckLake's
catalog, and moto's S3-compatible server for its data files. Both run on this machine, on loopback or a
Unix socket, and stop with the test session."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pgserver
from moto.server import ThreadedMotoServer

from tests.conftest import free_port

ACCESS_KEY = "sysmon-test-key"
SECRET_KEY = "sysmon-test-secret"
REGION = "us-east-1"


@dataclass
class Postgres:
    """A PostgreSQL server in a folder; each ``new_catalog()`` is a database of its own."""

    server: pgserver.PostgresServer
    socket_dir: Path

    def new_catalog(self) -> str:
        """A fresh database, as a ``SYSMON_LAKE_CATALOG`` value (``postgres:`` plus a libpq connection string)."""
        name = f"lake_{uuid.uuid4().hex[:12]}"
        self.server.psql(f"CREATE DATABASE {name};")
        return f"postgres:dbname={name} host={self.socket_dir} user=postgres"


@dataclass
class S3:
    """moto's S3 server on loopback, with the standard AWS variables that reach it."""

    endpoint: str

    def environ(self) -> dict[str, str]:
        """``AWS_*`` variables for the pipeline: a plain ``http://`` endpoint (no TLS, path-style URLs)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name."""
        name = f"lake-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every object key in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def postgres_fixture() -> Iterator[Postgres]:
    """Start PostgreSQL in a folder of its own for the session; stop it and delete the folder afterwards.

    Run as root, pgserver runs PostgreSQL as an unprivileged user, which must reach the folder: pytest's own
    temporary folders are private to root, so this one is made under the system's temporary folder.
    """
    root = Path(tempfile.mkdtemp(prefix="sysmon-pg-"))
    root.chmod(0o755)
    server = pgserver.get_server(root / "data", cleanup_mode="delete")
    try:
        yield Postgres(server, root / "data")
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def s3_fixture() -> Iterator[S3]:
    """Start moto's S3 server on a free loopback port for the session; stop it afterwards."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
