"""Downloads over real HTTP from a server on 127.0.0.1 started by the test: the enwik8 prefix cut from its zip,
gzipped files, the cache, a corrupt download and an interrupted one (no half file is ever used)."""

import dataclasses
import gzip
import io
import os
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from roformer.data import REGISTRY, DataUnavailable, registry, resolve
from roformer.data.corpora import load_bytes_corpus

from .conftest import require_data


class Server:
    """Serves ``files`` (path -> bytes); ``truncate`` sends the full Content-Length but half the body."""

    def __init__(self, files):
        self.files, self.requests, self.truncate = files, [], False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.truncate else body)
                if server.truncate:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def empty(tmp_path, monkeypatch):
    """An empty mirror and an empty cache."""
    monkeypatch.setenv("ROFORMER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "mirror").mkdir()
    return tmp_path / "mirror"


def _point_at(monkeypatch, name, url_for):
    files = tuple(dataclasses.replace(f, url=url_for(f)) for f in REGISTRY[name].files)
    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], files=files))


def _enwik8_zip(mirror, corrupt=False):
    prefix = b"".join((mirror / f.path).read_bytes() for f in REGISTRY["enwik8"].files)
    if corrupt:
        prefix = prefix[:1000] + b"X" + prefix[1001:]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("enwik8", prefix + b"<the rest of the 10^8 bytes>")
    return buffer.getvalue()


def test_enwik8_prefix_is_cut_from_the_zip_checked_cached_and_reused(mirror, empty, monkeypatch):
    require_data("enwik8")
    server = Server({"/enwik8.zip": _enwik8_zip(mirror)})
    try:
        _point_at(monkeypatch, "enwik8", lambda f: server.url + "/enwik8.zip")
        paths = resolve("enwik8", mirror=empty)
        assert len(server.requests) == 1  # both parts come from one download
        for f in REGISTRY["enwik8"].files:
            assert paths[f.path].read_bytes() == (mirror / f.path).read_bytes()
            assert str(paths[f.path]).startswith(os.environ["ROFORMER_CACHE"])
        assert resolve("enwik8", mirror=empty) == paths and len(server.requests) == 1  # the cache serves
        assert len(load_bytes_corpus("enwik8", empty)["train"]) == int(4_154_400 * 0.9)
    finally:
        server.close()


def test_a_corrupt_download_is_refused_and_leaves_nothing(mirror, empty, monkeypatch):
    require_data("enwik8")
    server = Server({"/enwik8.zip": _enwik8_zip(mirror, corrupt=True)})
    try:
        _point_at(monkeypatch, "enwik8", lambda f: server.url + "/enwik8.zip")
        with pytest.raises(DataUnavailable, match=r"^data set 'enwik8': the download from \S+ does not give "):
            resolve("enwik8", mirror=empty)
        cache = Path(os.environ["ROFORMER_CACHE"])
        assert not [p for p in cache.rglob("*") if p.is_file()]  # neither the zip nor a part is kept
        server.files["/enwik8.zip"] = _enwik8_zip(mirror)  # the next attempt downloads anew and succeeds
        resolve("enwik8", mirror=empty)
    finally:
        server.close()


def test_an_interrupted_download_is_never_used(mirror, empty, monkeypatch):
    require_data("enwik8")
    server = Server({"/enwik8.zip": _enwik8_zip(mirror)})
    server.truncate = True
    try:
        _point_at(monkeypatch, "enwik8", lambda f: server.url + "/enwik8.zip")
        with pytest.raises(DataUnavailable, match="could not download"):
            resolve("enwik8", mirror=empty)
        cache = Path(os.environ["ROFORMER_CACHE"])
        assert not [p for p in cache.rglob("*") if p.is_file()]
        server.truncate = False
        assert len(resolve("enwik8", mirror=empty)) == 2
    finally:
        server.close()


def test_gzipped_sources_are_unpacked_and_checked(mirror, empty, monkeypatch):
    """multi30k's canonical files are gzipped: fetched over HTTP, unpacked, verified, cached."""
    require_data("multi30k")
    files = {f"/{f.path.split('/')[-1]}.gz": gzip.compress((mirror / f.path).read_bytes())
             for f in REGISTRY["multi30k"].files}
    server = Server(files)
    try:
        _point_at(monkeypatch, "multi30k", lambda f: f"{server.url}/{f.path.split('/')[-1]}.gz")
        paths = resolve("multi30k", mirror=empty)
        assert all(paths[f.path].read_bytes() == (mirror / f.path).read_bytes() for f in REGISTRY["multi30k"].files)
        count = len(server.requests)
        assert resolve("multi30k", mirror=empty) == paths and len(server.requests) == count
    finally:
        server.close()


def test_main_job_without_a_mirror_fails_at_the_download_with_one_line(tmp_path):
    """What `make main` does on a machine with no ../shared and no network (as here and in CI)."""
    try:
        socket.getaddrinfo("mattmahoney.net", 80)
        pytest.skip("this machine reaches the network: the real download would run")
    except OSError:
        pass
    env = {k: v for k, v in os.environ.items() if k != "ROFORMER_DATA_DIR"}
    env["ROFORMER_CACHE"] = str(tmp_path / "cache")
    (tmp_path / "nomirror").mkdir()
    result = subprocess.run([str(Path(sys.executable).parent / "roformer"), "train", "--preset", "smoke",
                             "--data-dir", str(tmp_path / "nomirror"), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("roformer: error:")]
    assert len(errors) == 1 and "could not download http://mattmahoney.net/dc/enwik8.zip" in errors[0]
    assert "--data-dir" in errors[0]


def test_unknown_transform_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown transform"):
        registry._cut(tmp_path, "rar", io.BytesIO())
