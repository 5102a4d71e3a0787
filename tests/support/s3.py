"""A real S3-compatible server (npm ``s3rver``) on 127.0.0.1 for origin tests and the bench."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mxfs.demo import free_port, wait_for

ACCESS_KEY = SECRET_KEY = "S3RVER"


def s3rver_path(install: bool = True) -> str | None:
    """``s3rver`` on PATH, installing it with npm (bounded) when missing; None if impossible."""
    exe = shutil.which("s3rver")
    if exe or not install or not shutil.which("npm"):
        return exe
    try:
        subprocess.run(["npm", "install", "-g", "s3rver"], capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which("s3rver")


@dataclass
class S3Server:
    """``s3rver`` in a subprocess, its buckets created at start; ``env()`` is what boto3 needs."""

    workdir: Path
    buckets: tuple[str, ...] = ("models",)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self) -> S3Server:
        exe = s3rver_path()
        if exe is None:
            raise FileNotFoundError("s3rver is not installed and npm cannot install it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [exe, "-d", str(self.workdir / "data"), "-a", "127.0.0.1", "-p", str(self.port), "-s"]
        for b in self.buckets:
            args += ["--configure-bucket", b]
        self.proc = subprocess.Popen(args, stdout=(self.workdir / "s3rver.log").open("a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        client = self.client()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"s3rver exited: {(self.workdir / 's3rver.log').read_text()}")
            try:
                client.list_buckets()
                return True
            except Exception:
                return False

        wait_for(up, 30, "s3rver")
        return self

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=access_key,
                            aws_secret_access_key=secret_key, region_name="us-east-1")

    def upload_dir(self, bucket: str, prefix: str, directory: Path) -> list[str]:
        """Upload every file under ``directory`` to ``s3://bucket/prefix/<relpath>``."""
        client, keys = self.client(), []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            key = f"{prefix.strip('/')}/{path.relative_to(directory).as_posix()}".lstrip("/")
            client.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
