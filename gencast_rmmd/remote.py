"""Files and stores at a local path or an fsspec URL (`gs://`, `s3://`, `https://`, `memory://`).

On a pod, or on Dataflow where workers share no disk, a run's inputs and outputs live in a
bucket: the canonical store `data prepare` wrote, DeepMind's official GenCast checkpoints and
normalisation statistics (`gs://dm_graphcast/gencast/...`, public), forecast stores. Everything
here takes a local path or a URL alike:

- `is_url`, `source_path`: what is a URL, and how a path is recorded (URLs as given, local paths
  absolute);
- `url_storage_options`: the fsspec options a reader of a URL uses (gcsfs's token rule);
- `filesystem`, `exists`, `remove`: fsspec's filesystem for a path or URL, for writers;
- `written`, `write_text`: write a file at a path or URL so that it appears whole or not at all;
- `local_file`, `local_files`: a local copy of a file (a checkpoint) or of named files in a
  directory (a statistics directory) given by URL, fetched once into the cache
  (`remote_cache_dir`) and fetched again only when the object changes (the object's
  metadata, as fsspec's `info` reports it, is part of the key; an object whose metadata names no
  version, as from an HTTP server without ETag and Last-Modified, is fetched on every use and
  keyed by its content); the older copy of the same URL is then deleted, so the cache holds one
  copy per URL. Readers then open local files: hashing, `np.load` and netCDF readers stay what
  they are for local inputs. Local paths are returned as they are.

Cache layout: `<sha(URL)>/<sha(object metadata)>/<file name>`, with the URL in
`<sha(URL)>/.source`; a directory from `local_files` is `dirs/<sha(URL)>/<sha(its copies)>/`,
holding hard links to the copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator

from gencast_rmmd.errors import OutputError, UserError, no_space_message


def is_url(source: str | os.PathLike) -> bool:
    """Whether `source` names a store through an fsspec URL (`gs://`, `s3://`, `memory://`, ...)
    rather than a local path (`file://` paths are local)."""
    source = os.fspath(source)
    return "://" in source and not source.startswith("file://")


def local_path(source: str | os.PathLike) -> str:
    """`source` with a `file://` scheme stripped (a local path or a URL otherwise unchanged)."""
    source = os.fspath(source)
    return source[len("file://") :] if source.startswith("file://") else source


def source_path(source: str | os.PathLike) -> str:
    """`source` as recorded and reopened later: URLs as given, local paths (`file://` stripped)
    made absolute."""
    source = os.fspath(source)
    if is_url(source):
        return source
    return str(pathlib.Path(local_path(source)).absolute())


def _location(source: str | os.PathLike) -> str:
    """What two arguments naming one store share: a URL as given less a trailing '/', a local
    path resolved (symlinks, '..', a trailing '/', `file://`)."""
    source = os.fspath(source)
    return source.rstrip("/") if is_url(source) else os.path.realpath(local_path(source))


def same_store(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two store arguments name the same store."""
    return _location(a) == _location(b)


def overlapping(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two store arguments name the same store or one lies inside the other."""
    ka, kb = _location(a), _location(b)
    return ka == kb or ka.startswith(kb.rstrip("/") + "/") or kb.startswith(ka.rstrip("/") + "/")


def url_storage_options(
    source: str, token: str | None = None, storage_options: dict | None = None
) -> dict:
    """The fsspec options every reader of the store at URL `source` uses: `storage_options`, and
    for `gs://` URLs gcsfs's `token`: the one given, else the one fsspec's configuration names
    (e.g. `FSSPEC_GS_TOKEN=google_default` for a private bucket, such as `data prepare` output
    written on Dataflow), else "anon" (public buckets such as ARCO-ERA5, no credentials needed)."""
    opts = dict(storage_options or {})
    if source.startswith(("gs://", "gcs://")) and "token" not in opts:
        import fsspec.config

        if token is not None:
            opts["token"] = token
        elif not any("token" in fsspec.config.conf.get(p, {}) for p in ("gs", "gcs")):
            opts["token"] = "anon"
    return opts


def filesystem(source: str | os.PathLike, read_only: bool = False):
    """(fsspec filesystem, path within it) for a local path or URL. Readers (`read_only`) get
    `url_storage_options` (anonymous reads of public buckets); writers get fsspec's default
    credentials, as zarr and xarray use when they write to a URL."""
    import fsspec

    source = local_path(source)
    opts = url_storage_options(source) if read_only and is_url(source) else {}
    return fsspec.core.url_to_fs(source, **opts)


def exists(source: str | os.PathLike) -> bool:
    fs, path = filesystem(source)
    return fs.exists(path)


def _existing_parent(path: str | os.PathLike) -> pathlib.Path:
    """The nearest existing ancestor of a local `path` (a file where a directory should be, or
    the directory a new path would be made in)."""
    return next(p for p in pathlib.Path(os.path.abspath(path)).parents if p.exists())


def check_out_dir(out: str | os.PathLike, what: str = "a directory", beside: bool = False) -> None:
    """Refuse, with `OutputError`, a run directory `--out` (a local path or URL) that cannot be
    one: it exists as a file, or (on disk) it lies under a file or where nothing can be written
    (no permission, a read-only file system): in it when it exists, else in the directory it
    would be made in. With `beside` (a command that builds its output next to it and renames it
    into place, as `evaluate` does) the directory `out` is in is probed as well. `what` ends the
    message ("choose WHAT"). Commands call it before any work, so a refused run leaves nothing
    behind: each probe is an empty directory, made and removed at once."""
    fs, path = filesystem(out)
    shown = repr(os.fspath(out))
    if fs.isfile(path):
        raise OutputError(f"--out {shown} exists and is not a directory; choose {what}")
    if is_url(out):
        return
    places = []
    if os.path.isdir(path):
        places.append((pathlib.Path(path), "write in"))
    if beside or not places:
        parent = _existing_parent(path)
        if not parent.is_dir():
            raise OutputError(f"--out {shown}: {str(parent)!r} is a file; choose {what}")
        places.append((parent, "create a directory in"))
    for place, verb in places:
        try:
            os.rmdir(tempfile.mkdtemp(dir=place, prefix=".gencast_rmmd-probe-"))
        except OSError as e:
            raise OutputError(
                f"--out {shown}: cannot {verb} {str(place)!r} ({e.strerror or e}); choose {what}"
            ) from None


def check_local_out_dir(
    out: str | os.PathLike, what: str, command: str, beside: bool = False
) -> pathlib.Path:
    """`check_out_dir` for a command that writes its `--out` on local disk only: a URL is an
    `OutputError` saying so (`pathlib.Path("gs://b/run")` is the local path `gs:/b/run`, where
    such a run used to be written without a word). Returns `out` as a local path."""
    refuse_url_out(out, what, command)
    check_out_dir(out, what, beside)
    return pathlib.Path(out)


def refuse_url_out(out: str | os.PathLike, what: str, command: str) -> None:
    """`OutputError` when `--out` is a URL for `command`, which writes its output (`what`: "a run
    directory", "a local path") on local disk only."""
    if is_url(out):
        raise OutputError(
            f"--out {os.fspath(out)!r}: `{command}` writes its output on local disk, not at a "
            f"URL; choose {what} on local disk (copy it to the bucket afterwards, e.g. with "
            "`gcloud storage cp`)"
        )


def remove(source: str | os.PathLike) -> None:
    """Delete a file or directory (recursively) at a local path or URL, if it exists."""
    fs, path = filesystem(source)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def check_room(dest: str | os.PathLike, nbytes: int) -> None:
    """`OutputError` when the local disk that file `dest` goes to (its nearest existing
    directory) has fewer than `nbytes` free; nothing for a URL. For writers that a full disk
    hurts worse than a refusal: HDF5 (netCDF4 files), out of space, crashed the process with a
    segmentation fault as it exited."""
    if is_url(dest):
        return
    free = shutil.disk_usage(_existing_parent(dest)).free
    if free < nbytes:
        raise OutputError(
            no_space_message(
                f"no space left on the device writing {os.fspath(dest)}",
                f"it takes about {mib(nbytes)}, {mib(free)} free",
            )
        )


def refuse_directory_path(dest: str | os.PathLike) -> None:
    """`OutputError` when the path of a file to write ends in '/': written as a directory's
    (`--out runs/export/`), where a file would take the directory's name. Callers that turn the
    path into a `pathlib.Path` (which drops the '/') check it first."""
    if os.fspath(dest).endswith("/"):
        raise OutputError(
            f"{os.fspath(dest)!r} ends in '/' (a directory); expected the path of a file to write"
        )


@contextlib.contextmanager
def written(dest: str | os.PathLike) -> Iterator[str]:
    """A local temporary path to write the file `dest` (a local path or URL) to: when the block
    ends without an error it is moved into place whole (on disk: one rename within `dest`'s
    directory, which is created; at a URL: one upload, as an object store makes an object
    visible only once it is whole), otherwise removed. Nothing half-written is ever at `dest`.
    A local `dest` that is a directory, or whose directory cannot be made or written to, is an
    `OutputError` naming it, raised before the block runs."""
    from gencast_rmmd.safety import publish_mode

    dest = local_path(dest)
    name = dest.rstrip("/").rsplit("/", 1)[-1]
    refuse_directory_path(dest)
    if is_url(dest):
        directory = None
    else:
        directory = os.path.dirname(os.path.abspath(dest))
        if os.path.isdir(dest):
            raise OutputError(f"{dest!r} is a directory; expected the path of a file to write")
    try:
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    except OSError as e:
        why = e.strerror or str(e)
        if directory is not None and (parent := _existing_parent(dest)).is_file():
            why = f"{str(parent)!r} is a file"
        raise OutputError(f"cannot write {dest!r} ({why}); choose another path") from None
    os.close(fd)
    try:
        yield tmp
        if directory is None:
            fs, path = filesystem(dest)
            fs.put_file(tmp, path)
        else:
            publish_mode(tmp)  # mkstemp makes it 0600; give it a plain write's permissions
            os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(dest: str | os.PathLike, text: str) -> None:
    """Write `text` to the file `dest` (a local path or URL) through `written`: whole or not at
    all, with a plain write's permissions, and no clash between processes writing it at once."""
    with written(dest) as tmp:
        pathlib.Path(tmp).write_text(text)


def remote_cache_dir() -> pathlib.Path:
    """Where local copies of files given by URL live: `$GENCAST_RMMD_REMOTE_CACHE`, else
    `$GENCAST_RMMD_CACHE/remote` (default `~/.cache/gencast_rmmd/remote`)."""
    from gencast_rmmd.data.nature_run import cache_dir

    if os.environ.get("GENCAST_RMMD_REMOTE_CACHE"):
        return pathlib.Path(os.environ["GENCAST_RMMD_REMOTE_CACHE"])
    return cache_dir() / "remote"


def check_input_file(
    path: str | os.PathLike,
    what: str,
    expected: str,
    error: type[UserError] = UserError,
    suffix: str | None = None,
) -> None:
    """Refuse, with `error`, a local input `path` that is not a regular file: missing, a
    directory, or a device / FIFO / socket (a read of those blocks or yields nothing useful).
    `what` names the input ("checkpoint", "image data file"), `expected` the file it should be
    ("an .npz file"); a directory's files ending in `suffix` are named (a run directory given
    for the checkpoint inside it)."""
    p = pathlib.Path(path)
    if p.is_file():
        return
    if not p.exists():
        raise error(f"{what} {os.fspath(path)!r} does not exist (expected {expected})")
    kind = "a directory" if p.is_dir() else "not a regular file"
    held = ""
    if p.is_dir() and suffix:  # a run directory: name the files it holds that would do
        names = sorted(c.name for c in p.iterdir() if c.name.endswith(suffix) and c.is_file())
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            held = f" (it holds {shown})"
    raise error(f"{what} {os.fspath(path)!r} is {kind}; expected {expected}{held}")


# Proxy settings: a host that does not resolve here may be reached through the proxy.
_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


# How long `check_host` waits for the host to accept a connection: a slow link still does
# within it; gcsfs's own retries took 37 s to give up on a refused connection.
CONNECT_TIMEOUT_S = 10.0


def check_host(source: str, storage_options: dict | None = None) -> None:
    """`ConnectionError` at once when the host that URL `source` is read from cannot be reached:
    its name has no address (no network, no DNS), or it refuses or does not answer a connection
    within `CONNECT_TIMEOUT_S` (nothing listening, a firewall). gcsfs retried for 35-40 s before it
    said so. gs:// reads from the `endpoint_url` of `storage_options` (gcsfs's option), else
    `STORAGE_EMULATOR_HOST`, else storage.googleapis.com; http(s):// from the URL's host; other
    schemes, and any URL while a proxy is set, are not checked."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(k) for k in _PROXY_ENV):
        return
    scheme = source.split("://", 1)[0].lower()
    if scheme in ("gs", "gcs"):
        endpoint = (
            (storage_options or {}).get("endpoint_url")
            or os.environ.get("STORAGE_EMULATOR_HOST")
            or "https://storage.googleapis.com"
        )
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    elif scheme in ("http", "https"):
        parts = urlsplit(source)
    else:
        return
    host = parts.hostname
    if not host:
        return
    try:
        port = parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:  # a port that is not a number: the reader's own error says so
        return
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except socket.gaierror as e:
        raise ConnectionError(f"cannot resolve host {host} ({e.strerror or e})") from e
    except TimeoutError as e:
        raise ConnectionError(f"{host}:{port} did not answer within {CONNECT_TIMEOUT_S:g} s") from e
    except OSError as e:
        raise ConnectionError(f"cannot connect to {host}:{port} ({e.strerror or e})") from e


def network_problem(e: BaseException) -> str | None:
    """A sentence for an error that says a remote store's host could not be reached (no network,
    DNS, a refused or timed-out connection), found anywhere in `e`'s chain of causes; None for
    any other error (a missing object, a bad format)."""
    import socket

    try:
        from aiohttp import ClientConnectionError
    except ImportError:  # no HTTP filesystem installed
        ClientConnectionError = ConnectionError  # noqa: N806
    for seen in causes(e):
        if isinstance(
            seen, ClientConnectionError | ConnectionError | socket.gaierror | TimeoutError
        ):
            return (
                f"its host cannot be reached ({seen}); check the network connection, or use a "
                "local copy"
            )
    return None


def causes(e: BaseException) -> Iterator[BaseException]:
    """`e`, then its cause (or context), and so on; each once (a chain may loop: an exception
    raised again as its own cause)."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        yield x
        x = x.__cause__ or x.__context__


def local_file(source: str | os.PathLike, error: type[UserError] = UserError) -> str:
    """A local path holding the bytes of the file at `source`: `source` itself when it is a local
    path (not checked here), else a copy in the cache, fetched when the object at the URL is new
    or changed. `error` (a `UserError` subclass) is raised, naming the URL, when it does not
    exist or cannot be read."""
    source = os.fspath(source)
    if not is_url(source):
        return local_path(source)
    fs, path = filesystem(source, read_only=True)
    try:
        check_host(source)
        info = fs.info(path)
        if info.get("type") == "directory":
            raise error(f"{source!r} is a directory, expected a file")
        version = object_version(info)
    except (OSError, ValueError) as e:
        unreachable = network_problem(e)  # fsspec's HTTP filesystem reports one as not found
        if unreachable:
            raise error(f"{source!r} cannot be read: {unreachable}") from None
        if isinstance(e, FileNotFoundError):
            raise error(f"{source!r} does not exist") from None
        raise error(f"{source!r} cannot be read ({type(e).__name__}: {e})") from None
    name = path.rstrip("/").rsplit("/", 1)[-1] or "file"
    group = _url_group(remote_cache_dir(), source)
    if version is not None:
        dest = group / _digest(version, 16) / name
        if dest.is_file():
            return str(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _download(fs, path, dest.parent, name, source, error)
    else:
        # The server names no version of the object (an HTTP server without ETag and
        # Last-Modified): it is fetched every time and its copy keyed by its content, so a
        # replacement of the same size cannot pass for the copy.
        from gencast_rmmd.safety import file_sha256

        tmp = _download(fs, path, group, name, source, error)
        dest = group / _digest(f"sha256:{file_sha256(tmp)}", 16) / name
        dest.parent.mkdir(exist_ok=True)
    os.replace(tmp, dest)  # the copy appears only once it is whole
    _remove_other_versions(dest.parent)
    return str(dest)


# The fields of fsspec's `info` that name a version of an object: HTTP's validators (ETag,
# Last-Modified, Content-MD5, Digest), GCS's (generation, checksums, update time), S3's (ETag,
# LastModified, VersionId), Azure's, and the modification or creation times other filesystems
# report. Anything else (size, type, `partial` when a server refuses range requests) does not:
# an object without a value for any of these is fetched on every use.
_VERSION_INFO = frozenset(
    {
        "ETag",
        "etag",
        "Last-Modified",
        "last_modified",
        "LastModified",
        "Content-MD5",
        "Digest",
        "VersionId",
        "version_id",
        "generation",
        "md5Hash",
        "crc32c",
        "updated",
        "mtime",
        "created",
    }
)


def object_version(info: dict) -> str | None:
    """What tells an object at a URL from one written there later, from fsspec's `info` of it
    (one request): the metadata as reported (size, and on GCS checksums, generation and update
    time, over HTTP(S) ETag / Last-Modified); None when it names no version (`_VERSION_INFO`)."""
    if not any(info.get(k) not in (None, "") for k in _VERSION_INFO):
        return None
    return json.dumps(info, sort_keys=True, default=str)


def _download(fs, path: str, directory: pathlib.Path, name: str, source: str, error) -> str:
    """Fetch `path` into a temporary file in `directory` and return its name; on failure it is
    removed and `error` names the URL."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    try:
        fs.get_file(path, tmp)
    except (OSError, ValueError) as e:
        os.remove(tmp)
        raise error(f"{source!r} cannot be read ({type(e).__name__}: {e})") from None
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


def local_files(
    directory: str | os.PathLike, names: Iterable[str], error: type[UserError] = UserError
) -> str:
    """A local directory holding the files `names` of `directory` (a local path, returned as it
    is, or a URL: each file fetched as by `local_file`, then linked side by side into one
    directory of the cache named by their versions). `error` names the missing file(s)."""
    directory = os.fspath(directory)
    if not is_url(directory):
        return local_path(directory)
    names = sorted(names)
    base = directory.rstrip("/")
    copies, missing = {}, []
    for name in names:
        try:
            copies[name] = local_file(f"{base}/{name}", error)
        except error as e:
            if "does not exist" not in str(e):
                raise
            missing.append(name)
    if missing:
        raise error(f"{directory!r} lacks {missing} (expected {names})")
    group = _url_group(remote_cache_dir() / DIRS, base)
    dest = group / _digest("\n".join(copies[n] for n in names), 32)
    if not dest.is_dir():
        tmp = pathlib.Path(tempfile.mkdtemp(dir=group, prefix=".dir."))
        for name in names:
            try:
                os.link(copies[name], tmp / name)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(copies[name], tmp / name)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process made the same directory meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_other_versions(dest)
    return str(dest)


# The sub-directory of `remote_cache_dir` for `local_files`' directories, and the file naming
# the URL of a URL's group.
DIRS = "dirs"
SOURCE_FILE = ".source"


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _url_group(root: pathlib.Path, url: str) -> pathlib.Path:
    """The directory holding the versions of `url`'s copy under `root`, with the URL recorded
    in its `SOURCE_FILE` (for `gencast-rmmd data cache`)."""
    group = root / _digest(url, 32)
    group.mkdir(parents=True, exist_ok=True)
    record = group / SOURCE_FILE
    if not record.exists():
        write_text(record, url)
    return group


def _remove_other_versions(keep: pathlib.Path) -> None:
    """Delete the other versions beside `keep` (older copies of the same URL): they are never
    served again, since the key of a copy is the object's current metadata. A process still
    reading one keeps its open file (POSIX); temporary names (a fetch in progress) are kept."""
    for other in keep.parent.iterdir():
        if other != keep and not other.name.startswith("."):
            if other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
            else:
                other.unlink(missing_ok=True)
