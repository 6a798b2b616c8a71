"""A real S3-compatible server on 127.0.0.1 for the object-storage tests and benchmarks/s3_loader.py.

moto's server (``moto[server]``, in the dev extra) runs in a thread of the calling process on a free port; an
optional WSGI wrapper delays every request by ``delay_s`` (the latency of a remote store, for the benchmark).
Clients find it the standard way: ``AWS_ENDPOINT_URL`` and ``FSSPEC_S3_ENDPOINT_URL`` in the environment, fake
credentials in ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (subprocesses inherit them).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

ENV_KEYS = ("AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


def client_env(endpoint: str) -> dict[str, str]:
    """The environment that points an S3 client (boto, s3fs, a declip subprocess) at ``endpoint`` with fake
    credentials and no look-up of real ones."""
    return dict(AWS_ENDPOINT_URL=endpoint, FSSPEC_S3_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull)


class _Delayed:
    """WSGI middleware: every request waits ``delay_s`` before moto answers it (the round trip of a far store).
    ``PUT /__declip_delay_ms/N`` sets the delay to N ms (the benchmark compares latencies on one server)."""

    PATH = "/__declip_delay_ms/"

    def __init__(self, app, delay_s: float):
        self.app, self.delay_s = app, delay_s

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(self.PATH):
            self.delay_s = float(path[len(self.PATH):]) / 1000
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        time.sleep(self.delay_s)
        return self.app(environ, start_response)


def set_delay(endpoint: str, delay_ms: float) -> None:
    """Change a running :class:`LocalS3`'s per-request delay (it must have been started with a delay wrapper)."""
    import urllib.request

    req = urllib.request.Request(f"{endpoint}{_Delayed.PATH}{delay_ms:g}", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.read() == b"ok"


class LocalS3:
    """``with LocalS3(delay_s=0.02) as s3: s3.upload(folder, "s3://bucket/prefix")``; the environment points at
    it while open and is restored on close. ``delay_s=None``: no delay wrapper (0 keeps one, changeable with
    :func:`set_delay`)."""

    def __init__(self, delay_s: float | None = None):
        self.delay_s = delay_s
        self._server = None
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> "LocalS3":
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        app = DomainDispatcherApplication(create_backend_app)
        if self.delay_s is not None:  # None: no wrapper at all
            app = _Delayed(app, self.delay_s)
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._saved = {k: os.environ.get(k) for k in ENV_KEYS}
        os.environ.update(client_env(self.endpoint))
        from declip import storage

        storage.reset()  # a client of an earlier server (or none) must not be reused
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        from declip import storage

        storage.reset()

    @property
    def fs(self):
        from declip import storage

        return storage.filesystem("s3://")

    def bucket(self, name: str) -> str:
        self.fs.mkdir(name)
        return f"s3://{name}"

    def upload(self, folder: Path, url: str) -> str:
        """Every file under ``folder`` to ``url/<relative path>``; returns ``url``."""
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                self.fs.pipe_file(f"{url}/{p.relative_to(folder).as_posix()}", p.read_bytes())
        return url
