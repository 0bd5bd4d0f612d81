"""Files given by URL (`gencast_rmmd.remote`): local copies fetched once, fetched again when the
object changes, and clear errors naming the URL."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re

import fsspec
import pytest

from gencast_rmmd import remote
from gencast_rmmd.errors import CheckpointError, DataError, OutputError

ROOT = "memory://gencast_rmmd_remote_test"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENCAST_RMMD_REMOTE_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists(ROOT):
        fs.rm(ROOT, recursive=True)


def test_local_file_is_fetched_once_and_again_when_changed(cache, tmp_path, monkeypatch):
    url = f"{ROOT}/w/params.npz"
    cache.pipe_file(url, b"first")
    a = remote.local_file(url)
    assert pathlib.Path(a).read_bytes() == b"first" and a.endswith("params.npz")
    assert pathlib.Path(a).is_relative_to(tmp_path / "cache")
    fetches = []
    real_get = type(cache).get_file
    monkeypatch.setattr(
        type(cache), "get_file", lambda self, *a, **k: fetches.append(a) or real_get(self, *a, **k)
    )
    assert remote.local_file(url) == a and not fetches  # unchanged: served from the copy
    cache.pipe_file(url, b"second, longer")  # re-made at the same URL
    b = remote.local_file(url)
    assert b != a and pathlib.Path(b).read_bytes() == b"second, longer" and len(fetches) == 1
    assert not [p for p in pathlib.Path(b).parent.iterdir() if p.name.endswith(".part")]
    # One copy per URL: the older one is deleted; the URL is recorded beside its versions.
    group = pathlib.Path(b).parent.parent
    assert not os.path.exists(a)
    assert sorted(p.name for p in group.iterdir()) == sorted(
        [remote.SOURCE_FILE, pathlib.Path(b).parent.name]
    )
    assert (group / remote.SOURCE_FILE).read_text() == url


def test_local_file_errors_name_the_url(cache, tmp_path):
    with pytest.raises(CheckpointError, match=f"'{ROOT}/nope.npz' does not exist"):
        remote.local_file(f"{ROOT}/nope.npz", CheckpointError)
    cache.pipe_file(f"{ROOT}/d/x.nc", b"x")
    with pytest.raises(DataError, match="is a directory, expected a file"):
        remote.local_file(f"{ROOT}/d", DataError)
    # Local paths are not fetched, only `file://` stripped.
    assert remote.local_file(str(tmp_path / "a.npz")) == str(tmp_path / "a.npz")
    assert remote.local_file(f"file://{tmp_path}/a.npz") == str(tmp_path / "a.npz")


def test_local_files_copy_a_directory(cache, tmp_path):
    names = ["mean_by_level.nc", "stddev_by_level.nc"]
    for n in names:
        cache.pipe_file(f"{ROOT}/stats/{n}", n.encode())
    cache.pipe_file(f"{ROOT}/stats/other.txt", b"not asked for")
    d = remote.local_files(f"{ROOT}/stats/", names, DataError)
    assert sorted(os.listdir(d)) == names
    assert all((pathlib.Path(d) / n).read_bytes() == n.encode() for n in names)
    assert remote.local_files(f"{ROOT}/stats", names, DataError) == d  # same versions, same dir
    cache.pipe_file(f"{ROOT}/stats/{names[0]}", b"recomputed")
    d2 = remote.local_files(f"{ROOT}/stats", names, DataError)
    assert d2 != d and (pathlib.Path(d2) / names[0]).read_bytes() == b"recomputed"
    assert not os.path.exists(d)  # the older directory is deleted, as the older file copy
    assert sorted(os.listdir(pathlib.Path(d2).parent)) == sorted(
        [remote.SOURCE_FILE, pathlib.Path(d2).name]
    )
    with pytest.raises(DataError, match=r"lacks \['min_by_level.nc'\]"):
        remote.local_files(f"{ROOT}/stats", [*names, "min_by_level.nc"], DataError)
    assert remote.local_files(str(tmp_path), names) == str(tmp_path)


def test_remove_and_exists(cache):
    cache.pipe_file(f"{ROOT}/x/a", b"a")
    assert remote.exists(f"{ROOT}/x")
    remote.remove(f"{ROOT}/x")
    assert not remote.exists(f"{ROOT}/x")
    remote.remove(f"{ROOT}/x")  # nothing there: no error


def test_url_sources_keep_their_url_and_gcs_token(monkeypatch, tmp_path):
    """URLs are recorded as given and local paths made absolute; gs:// reads are anonymous
    unless a token is given or fsspec's configuration (FSSPEC_GS_TOKEN) names one."""
    import fsspec.config

    monkeypatch.chdir(tmp_path)
    assert remote.source_path("gs://bucket/remote.zarr") == "gs://bucket/remote.zarr"
    assert remote.source_path("memory://x/a.zarr") == "memory://x/a.zarr"
    assert remote.source_path("a.zarr") == str(tmp_path / "a.zarr")
    assert remote.source_path(f"file://{tmp_path}/a.zarr") == str(tmp_path / "a.zarr")
    assert not remote.is_url(f"file://{tmp_path}/a.zarr") and remote.is_url("s3://b/a.zarr")
    monkeypatch.setattr(fsspec.config, "conf", {})
    opts = remote.url_storage_options
    assert opts("gs://b/a.zarr") == {"token": "anon"}
    assert opts("gcs://b/a.zarr", token="google_default") == {"token": "google_default"}
    assert opts("gs://b/a.zarr", storage_options={"token": "t.json"}) == {"token": "t.json"}
    assert opts("s3://b/a.zarr", storage_options={"anon": True}) == {"anon": True}
    monkeypatch.setattr(fsspec.config, "conf", {"gs": {"token": "google_default"}})
    assert opts("gs://b/a.zarr") == {}  # fsspec applies its configured token
    assert opts("gs://b/a.zarr", token="anon") == {"token": "anon"}


@contextlib.contextmanager
def _http_server(
    directory: pathlib.Path,
    validators: bool = True,
    requests: list | None = None,
    ranges: bool = True,
):
    """A loopback HTTP server of `directory`'s files; `validators=False`: it sends no
    Last-Modified (Python's server sends no ETag either), so nothing names a file's version.
    `requests` collects (method, path) of what it serves. `ranges=False`: it says
    `Accept-Ranges: none` (fsspec then reports `partial: False`)."""
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send_response(self, *args, **kwargs):
            if requests is not None:
                requests.append((self.command, self.path))
            super().send_response(*args, **kwargs)

        def send_header(self, keyword, value):
            if validators or keyword.lower() != "last-modified":
                super().send_header(keyword, value)

        def end_headers(self):
            if not ranges:
                super().send_header("Accept-Ranges", "none")
            super().end_headers()

    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
    )
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()


def test_http_files_are_fetched_again_when_the_server_says_they_changed(tmp_path, monkeypatch):
    """Over HTTP the key is what the server reports (size, Last-Modified, ETag): a file
    rewritten with the same size but a new modification time is fetched again."""
    monkeypatch.setenv("GENCAST_RMMD_REMOTE_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served"
    served.mkdir()
    requests = []
    with _http_server(served, requests=requests) as base:
        url = f"{base}/w.npz"
        (served / "w.npz").write_bytes(b"one")
        os.utime(served / "w.npz", (1_000_000_000, 1_000_000_000))
        a = remote.local_file(url)
        assert remote.local_file(url) == a and pathlib.Path(a).read_bytes() == b"one"
        assert requests.count(("GET", "/w.npz")) == 1  # the second use is served by the copy
        (served / "w.npz").write_bytes(b"two")  # same size, later modification time
        os.utime(served / "w.npz", (1_000_000_100, 1_000_000_100))
        b = remote.local_file(url)
        assert b != a and pathlib.Path(b).read_bytes() == b"two"
        with pytest.raises(CheckpointError, match="does not exist"):
            remote.local_file(url + ".missing", CheckpointError)


@pytest.mark.parametrize("ranges", [True, False])
def test_http_files_without_a_version_are_fetched_every_time(tmp_path, monkeypatch, ranges):
    """A server that names no version (no ETag, no Last-Modified): size alone would serve a
    same-size replacement stale, so the file is fetched on every use and keyed by its content;
    also when the server refuses range requests (what else fsspec reports names no version)."""
    monkeypatch.setenv("GENCAST_RMMD_REMOTE_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served"
    served.mkdir()
    requests = []
    with _http_server(served, validators=False, requests=requests, ranges=ranges) as base:
        url = f"{base}/w.npz"
        (served / "w.npz").write_bytes(b"one")
        a = remote.local_file(url)
        assert remote.local_file(url) == a  # the same content: the same copy
        assert requests.count(("GET", "/w.npz")) == 2  # fetched both times
        (served / "w.npz").write_bytes(b"two")  # same size, same modification time
        os.utime(served / "w.npz", (os.stat(a).st_mtime,) * 2)
        b = remote.local_file(url)
        assert b != a and pathlib.Path(b).read_bytes() == b"two" and not os.path.exists(a)
        group = pathlib.Path(b).parent.parent
        assert sorted(p.name for p in group.iterdir()) == sorted(
            [remote.SOURCE_FILE, pathlib.Path(b).parent.name]
        )  # no temporary file left


def test_check_out_dir_refuses_a_file_or_a_path_under_one(cache, tmp_path):
    (tmp_path / "run").mkdir()
    remote.check_out_dir(tmp_path / "run")  # an existing directory: resumable
    remote.check_out_dir(tmp_path / "new" / "deeper")  # missing parents are created later
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"'.*/f' exists and is not a directory; choose a dir"):
        remote.check_out_dir(tmp_path / "f", "a dir")
    with pytest.raises(OutputError, match=r"'.*/f/a/b': '.*/f' is a file; choose a run directory"):
        remote.check_out_dir(tmp_path / "f" / "a" / "b", "a run directory")
    listing = sorted(os.listdir(tmp_path))
    remote.check_out_dir(tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == listing  # the creation probe left nothing behind
    if pathlib.Path("/proc/self").is_dir():  # Linux: no directory can be made in /proc
        with pytest.raises(OutputError, match=r"cannot create a directory in '/proc' \("):
            remote.check_out_dir("/proc/nope/run")
    cache.pipe_file(f"{ROOT}/obj", b"x")  # at a URL: an object where the prefix goes
    with pytest.raises(OutputError, match="exists and is not a directory"):
        remote.check_out_dir(f"{ROOT}/obj")
    remote.check_out_dir(f"{ROOT}/prefix/run")


def test_check_out_dir_probes_an_existing_directory_and_with_beside_its_parent(
    tmp_path, monkeypatch
):
    """An existing `--out` where nothing can be written (a read-only mount) is refused before any
    work; so, for a command that builds its output beside `--out` (`evaluate`, the kept blocks of
    `data stats`), is a directory `--out` lies in where nothing can be made. (Read-only places
    are simulated: the tests may run as root, whom permissions do not stop.)"""
    import errno
    import tempfile

    parent, out = tmp_path / "parent", tmp_path / "parent" / "out"
    out.mkdir(parents=True)
    read_only: set[pathlib.Path] = set()
    real = tempfile.mkdtemp

    def mkdtemp(*a, dir=None, **k):
        if pathlib.Path(dir) in read_only:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(remote.tempfile, "mkdtemp", mkdtemp)
    read_only.add(out)
    with pytest.raises(OutputError, match=r"cannot write in '.*/out' \(Read-only file system\)"):
        remote.check_out_dir(out, "a run directory")
    read_only = {parent}
    remote.check_out_dir(out, "a run directory")  # it writes in `out` only
    with pytest.raises(OutputError, match=r"cannot create a directory in '.*/parent' \(Read"):
        remote.check_out_dir(out, "a new path", beside=True)
    read_only = set()
    remote.check_out_dir(out, "a new path", beside=True)
    assert sorted(os.listdir(parent)) == ["out"] and not os.listdir(out)  # no probe left


def test_written_refuses_a_directory_or_an_unwritable_place_before_the_block(tmp_path):
    ran = []
    (tmp_path / "f").write_text("x")
    cases = [
        (tmp_path, r"is a directory; expected the path of a file to write"),
        (tmp_path / "f" / "a" / "t.npz", r"cannot write '.*/f/a/t\.npz' \('.*/f' is a file\)"),
        # written as a directory's path (a file would take the name 'export'), and not yet one
        (f"{tmp_path}/export/", r"'.*/export/' ends in '/' \(a directory\); expected the path"),
        ("gs://bucket/export/", r"'gs://bucket/export/' ends in '/'"),
    ]
    if pathlib.Path("/proc/self").is_dir():  # Linux: no file can be made in /proc
        cases.append(("/proc/t.npz", r"cannot write '/proc/t\.npz' \(No such file or directory\)"))
    for dest, want in cases:
        with pytest.raises(OutputError, match=want):
            with remote.written(dest):
                ran.append(dest)
    assert not ran and sorted(os.listdir(tmp_path)) == ["f"]
    remote.write_text(tmp_path / "new" / "t.txt", "ok")  # a missing directory is made
    assert (tmp_path / "new" / "t.txt").read_text() == "ok"


def test_check_input_file_names_what_is_there_instead(tmp_path):
    """A local input that is not a regular file is refused with the error class given: missing,
    a directory, or a FIFO (was reported as missing; a read of it blocks until a writer comes)."""
    good = tmp_path / "model.npz"
    good.write_bytes(b"PK")
    remote.check_input_file(good, "checkpoint", "an .npz file", CheckpointError)
    os.mkfifo(tmp_path / "pipe.npz")
    cases = {
        "nope.npz": r"does not exist \(expected an \.npz file\)",
        "": r"is a directory; expected an \.npz file",
        "pipe.npz": r"is not a regular file; expected an \.npz file",
    }
    for name, message in cases.items():
        path = re.escape(str(tmp_path / name))
        with pytest.raises(CheckpointError, match=rf"^checkpoint '{path}' {message}"):
            remote.check_input_file(tmp_path / name, "checkpoint", "an .npz file", CheckpointError)
    # a config path that exists but is no file is named as such, not "not found"
    from gencast_rmmd.config import resolve_config_path
    from gencast_rmmd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"config '.*' is a directory; expected a YAML file"):
        resolve_config_path(tmp_path, kind="model")
    with pytest.raises(ConfigError, match=r"not found \(looked for it as a path and in configs/"):
        resolve_config_path(tmp_path / "nope.yaml", kind="model")

    # A run directory given where its checkpoint goes: the .npz files it holds are named.
    run = tmp_path / "rmmd"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("student.npz", "aux.npz", "metrics.jsonl"):
        (run / name).write_bytes(b"PK")
    with pytest.raises(CheckpointError, match=r"is a directory; expected an \.npz file "
                       r"\(it holds aux\.npz, student\.npz\)$"):  # fmt: skip
        remote.check_input_file(run, "checkpoint", "an .npz file", CheckpointError, ".npz")
    with pytest.raises(CheckpointError, match=r"expected an \.npz file$"):
        remote.check_input_file(
            run / "checkpoints", "checkpoint", "an .npz file", CheckpointError, ".npz"
        )


def _refused_port() -> int:
    """A local TCP port nothing listens on: connections to it are refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_host_is_said_to_be_unreachable(cache):
    """No network (DNS failure, refused connection) used to read as a format problem ("expected
    a Zarr store or NetCDF file, could not open it") for a store, and as "does not exist" for a
    checkpoint at an HTTP URL (fsspec's HTTP filesystem turns the failure into not-found). Both
    now say the host cannot be reached; a plain missing file still reads as missing."""
    import socket

    from gencast_rmmd.data.era5 import open_store

    port = _refused_port()
    with pytest.raises(
        DataError, match=r"era5\.zarr' cannot be opened: its host cannot be reached"
    ):
        open_store(f"http://127.0.0.1:{port}/era5.zarr")
    with pytest.raises(
        CheckpointError, match=r"w\.npz' cannot be read: its host cannot be reached"
    ):
        remote.local_file(f"http://127.0.0.1:{port}/w.npz", CheckpointError)
    try:
        raise OSError("request failed") from socket.gaierror(-2, "Name or service not known")
    except OSError as e:
        assert "Name or service not known" in remote.network_problem(e)
    assert remote.network_problem(FileNotFoundError("gs://b/x")) is None
    assert remote.network_problem(ValueError("not a zarr store")) is None
    looped, other = OSError("a"), ValueError("b")  # a cyclic chain of causes ends the search
    looped.__cause__, other.__context__ = other, looped
    assert remote.network_problem(looped) is None


def test_gcsfs_layout_lookups_are_off_unless_the_user_asks():
    """gcsfs's bucket-layout lookup (a 60 s wait and a warning per bucket without network or
    credentials) is off by default; a value the user set is kept."""
    import subprocess
    import sys

    code = "import gencast_rmmd, os; print(os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'])"
    env = {k: v for k, v in os.environ.items() if k != "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "false", out.stderr
    env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "true"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "true", out.stderr


def test_local_only_outputs_refuse_a_url(tmp_path):
    """`pathlib.Path("gs://b/run")` is the local path `gs:/b/run`: the commands that write on
    local disk only refuse a URL `--out` instead of writing there; a local path is checked as
    `check_out_dir` does and comes back as a path."""
    for url in ("gs://b/run", "s3://b/run", "memory://run"):
        with pytest.raises(OutputError, match=r"`distill` writes its output on local disk"):
            remote.check_local_out_dir(url, "a run directory", "distill")
    assert (
        remote.check_local_out_dir(tmp_path / "run", "a run directory", "distill")
        == tmp_path / "run"
    )
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        remote.check_local_out_dir(tmp_path / "f", "a run directory", "distill")
    assert not (tmp_path / "gs:").exists()


def test_a_url_whose_host_has_no_address_is_refused_at_once(monkeypatch):
    """No network or no DNS: the store and file readers say the host cannot be reached without
    first sitting through gcsfs's retries (35 s measured offline for a gs:// store)."""
    import socket
    import time

    from gencast_rmmd.data.era5 import open_store
    from gencast_rmmd.errors import DataError

    asked = []

    def getaddrinfo(host, *a, **k):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    for k in remote._PROXY_ENV + ("STORAGE_EMULATOR_HOST",):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"cannot be opened: its host cannot be reached \(cannot "
                       r"resolve host storage\.googleapis\.com"):  # fmt: skip
        open_store("gs://some-bucket/era5.zarr")
    with pytest.raises(DataError, match=r"cannot be read: its host cannot be reached \(cannot "
                       r"resolve host example\.invalid"):  # fmt: skip
        remote.local_file("https://example.invalid/params.npz", DataError)
    assert time.monotonic() - t0 < 5
    assert asked == ["storage.googleapis.com", "example.invalid"]
    # an emulator's host is the one checked; behind a proxy nothing is
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://localhost:4443")
    with pytest.raises(ConnectionError, match="localhost"):
        remote.check_host("gs://b/x.zarr")
    # a data config's gcsfs endpoint_url wins over both
    with pytest.raises(DataError, match=r"cannot resolve host gcs\.internal\.example"):
        open_store(
            "gs://b/x.zarr", storage_options={"endpoint_url": "https://gcs.internal.example:9000"}
        )
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    remote.check_host("gs://b/x.zarr")
    remote.check_host("memory://x")
    assert asked[2:] == ["localhost", "gcs.internal.example"]


def test_a_host_that_refuses_is_said_at_once(monkeypatch):
    """A host whose name resolves but where nothing listens (a stopped emulator, a wrong port)
    is refused at once: gcsfs's retries took 37 s to say so (measured, STORAGE_EMULATOR_HOST at a
    closed localhost port). A host that accepts the connection passes."""
    import socket
    import time

    from gencast_rmmd.data.era5 import open_store
    from gencast_rmmd.errors import DataError

    for k in remote._PROXY_ENV:
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        remote.check_host("gs://b/x.zarr", {"endpoint_url": f"http://127.0.0.1:{port}"})
        remote.check_host(f"http://127.0.0.1:{port}/params.npz")
    # the port is closed now: nothing listens
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(DataError, match=rf"its host cannot be reached \(cannot connect to "
                       rf"127\.0\.0\.1:{port} \(Connection refused"):  # fmt: skip
        open_store("gs://some-bucket/era5.zarr")
    with pytest.raises(DataError, match=rf"cannot connect to 127\.0\.0\.1:{port}"):
        remote.local_file(f"http://127.0.0.1:{port}/params.npz", DataError)
    assert time.monotonic() - t0 < 5

    def no_answer(address, timeout=None):
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", no_answer)  # a firewall drops the packets
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    with pytest.raises(
        ConnectionError, match=r"storage\.googleapis\.com:443 did not answer within 10 s"
    ):
        remote.check_host("gs://b/x.zarr")


def test_a_config_may_be_read_from_a_url(cache):
    """`--config gs://bucket/model.yaml` (configs kept in a bucket on a pod): read from the local
    copy of the object; errors name the URL; a missing object is a ConfigError."""
    from gencast_rmmd.config import load_config, resolve_config_path
    from gencast_rmmd.errors import ConfigError
    from gencast_rmmd.model.configs import ModelConfig

    local = resolve_config_path("tiny", kind="model")
    url = f"{ROOT}/configs/model.yaml"
    cache.pipe_file(url, local.read_bytes())
    assert load_config(ModelConfig, url) == load_config(ModelConfig, local)
    cache.pipe_file(url, local.read_bytes() + b"\nmesh_sise: 3\n")
    with pytest.raises(ConfigError, match=rf"{ROOT}/configs/model\.yaml.*mesh_sise"):
        load_config(ModelConfig, url)
    with pytest.raises(ConfigError, match=rf"'{ROOT}/configs/none\.yaml' does not exist"):
        load_config(ModelConfig, f"{ROOT}/configs/none.yaml")


def test_same_store_and_overlapping_locations(tmp_path):
    """Store arguments compared as locations: local paths resolved (trailing '/', '..',
    symlinks, `file://`), URLs as given less a trailing '/'; `overlapping` also when one lies
    inside the other, and not for a sibling that shares a name prefix."""
    a = tmp_path / "a.zarr"
    a.mkdir()
    (tmp_path / "link.zarr").symlink_to(a)
    for same in (f"{a}/", f"{tmp_path}/x/../a.zarr", tmp_path / "link.zarr", f"file://{a}"):
        assert remote.same_store(a, same) and remote.overlapping(same, a)
    assert not remote.same_store(a, tmp_path) and remote.overlapping(a, tmp_path)
    assert remote.overlapping(a / "inner.zarr", a) and remote.overlapping(a, a / "inner.zarr")
    assert not remote.overlapping(a, tmp_path / "a.zarr2")
    assert remote.same_store("gs://b/x.zarr/", "gs://b/x.zarr")
    assert remote.overlapping("gs://b/x.zarr/y", "gs://b/x.zarr")
    assert not remote.overlapping("gs://b/x.zarr", "gs://b/x.zarr2")
    assert not remote.overlapping("gs://b/x.zarr", a)
    assert remote.overlapping("/", a)
