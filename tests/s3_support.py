"""A real S3-compatible server for the object-storage tests: moto's standalone server.

It runs in its own process on 127.0.0.1 and speaks HTTP, so the harness reaches it through
pyarrow's S3 client exactly as it would reach MinIO or Huawei OBS (no mock of the client
library). Its state lives in memory: :meth:`S3Server.stop` loses the buckets, and a server
started again on the same port must be given its objects again.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# What the tests put in the environment: the standard AWS variables, as a user would.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "harness-test-key", "AWS_SECRET_ACCESS_KEY": "harness-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """``python -m moto.server`` on a port; ``check_credentials`` makes it refuse every key
    (moto then validates keys against its IAM, which has none)."""

    def __init__(self, port: int | None = None, check_credentials: bool = False) -> None:
        self.port = port or free_port()
        self.check_credentials = check_credentials
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        env = dict(os.environ)
        if self.check_credentials:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                         "-p", str(self.port)], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not start in 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                                 access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                 secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
                                 allow_bucket_creation=True)

    def upload(self, folder: Path, bucket: str, prefix: str) -> str:
        """Every file under ``folder`` to ``s3://bucket/prefix/<relative path>``; the URI."""
        fs = self.filesystem()
        fs.create_dir(bucket)
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                self.put(f"{bucket}/{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes(), fs)
        return f"s3://{bucket}/{prefix}"

    def put(self, key: str, data: bytes, fs=None) -> str:
        fs = fs or self.filesystem()
        fs.create_dir(key.split("/", 1)[0])
        with fs.open_output_stream(key) as f:
            f.write(data)
        return f"s3://{key}"

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
