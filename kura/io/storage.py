"""One storage root for every artifact: a local folder or `s3://bucket/prefix` (any S3-compatible endpoint).

Why this shape: training pods, the Dagster UI and a laptop must read the same paths, and nothing downstream may
ever see half-written data. So every output is built in a *local* staging folder and then published:
- local root: the staging folder lives under `<root>/.staging/` and is `os.rename`d into place (atomic on one
  filesystem);
- object store: files are uploaded first and the commit marker (`_MANIFEST.json`) is written last; readers treat a
  folder without its marker as absent.
Small single files (JSON pointers) are written with temp + rename (local) or a single PUT (S3, atomic per object).

An object store can go away for a while (a restarted gateway, a network blip). Every remote call is idempotent
(PUT of the same bytes, GET, HEAD, LIST), so each is retried with exponential backoff for up to `retry_seconds`
before the step fails with a sentence naming the URI and the way out; a found-missing object is never retried.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import fsspec

from kura.io.hashing import stable_hash


def atomic_write(final: Path, data: bytes) -> None:
    """Write a local file so a reader sees the old content or the new, never a part: temp file, fsync, rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def pod_fs(uri: str):
    """(fsspec filesystem, path) for a URI handed to a pod's entry point (vLLM worker, trainer launcher, LoRA job):
    a local path, or s3:// with the endpoint from KURA_S3_ENDPOINT and credentials from the environment."""
    opts: dict[str, Any] = {}
    if uri.startswith("s3://") and os.environ.get("KURA_S3_ENDPOINT"):
        opts["endpoint_url"] = os.environ["KURA_S3_ENDPOINT"]
    return fsspec.core.url_to_fs(uri, **opts)


STAGE_PREFIX = "stage-"
_HOST = "".join(c if c.isalnum() else "_" for c in os.uname().nodename)[:40] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_dead_stages(base: Path) -> list[str]:
    """Delete staging folders whose owning process is gone (a run killed before it published or cleaned up).

    A staging folder is named `stage-<host>-<pid>-<random>`: only folders of this host are judged (the local root
    may be a shared filesystem), and only when their process no longer exists, so a live run's folder is never
    touched. Folders of the older unnamed form (`stage-<random>`) have no owner to ask; they are removed once they
    have been idle for a day. Returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return removed
    for e in entries:
        if not e.name.startswith(STAGE_PREFIX) or not e.is_dir(follow_symlinks=False):
            continue
        parts = e.name[len(STAGE_PREFIX):].split("-")
        if len(parts) >= 3 and parts[-2].isdigit():
            host, pid = "-".join(parts[:-2]), int(parts[-2])
            dead = host == _HOST and pid != os.getpid() and not _alive(pid)
        else:
            try:
                dead = time.time() - e.stat(follow_symlinks=False).st_mtime > 86400
            except FileNotFoundError:
                continue
        if dead:
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(e.name)
    return removed


class StorageError(RuntimeError):
    """A storage problem with the URI and the operation that failed in its message."""


def _transient(e: BaseException) -> bool:
    """Worth another try: the endpoint did not answer or answered 5xx/throttling. Not: missing object, denied."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    text = f"{type(e).__name__}: {e}"
    return isinstance(e, (ConnectionError, TimeoutError)) or any(
        m in text for m in ("Connect", "connect", "Timeout", "timed out", "EndpointConnection", "ServiceUnavailable",
                            "SlowDown", "InternalError", "503", "502", "500", "Broken pipe", "reset by peer",
                            "ServerDisconnected", "Connection aborted"))


class Storage:
    """A root URI plus the operations kura needs. Credentials for S3 come from the caller (the Dagster resource
    reads them from the environment); they are never stored on disk or in metadata."""

    def __init__(self, root: str, *, endpoint_url: str | None = None, key: str | None = None,
                 secret: str | None = None, cache_dir: str | None = None, retry_seconds: float = 60.0):
        if not root:
            raise StorageError("storage root is empty: give a folder or s3://bucket/prefix")
        self.root = root.rstrip("/")
        self.protocol = root.split("://", 1)[0] if "://" in root else "file"
        options: dict[str, Any] = {}
        if self.protocol == "s3":
            os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
            if endpoint_url:
                options["endpoint_url"] = endpoint_url
            if key is not None:
                options["key"] = key
            if secret is not None:
                options["secret"] = secret
        elif self.protocol == "file":
            self.root = str(Path(root.removeprefix("file://")).absolute())
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **options)
        self.is_local = self.protocol == "file"
        self.cache_dir = Path(cache_dir or tempfile.gettempdir()) / "kura-cache"
        self.retry_seconds = retry_seconds
        self.retries = 0  # remote calls that needed another try (reported by tests and the fault note)

    def _remote(self, what: str, fn, *args, **kwargs):
        """`fn(*args)` against the object store, retried with backoff (0.25 s doubling to 8 s) while the endpoint
        does not answer, for at most `retry_seconds`."""
        if self.is_local:
            return fn(*args, **kwargs)
        deadline, delay = time.monotonic() + self.retry_seconds, 0.25
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - classified below
                if not _transient(e) or time.monotonic() + delay > deadline:
                    if _transient(e):
                        raise StorageError(f"cannot {what}: the object store did not answer for "
                                           f"{self.retry_seconds:.0f} s ({type(e).__name__}: {e}); check that the "
                                           f"endpoint is up and rerun: finished outputs are kept") from e
                    raise
                self.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
                try:
                    self.fs.invalidate_cache()
                except Exception:  # noqa: BLE001 - a cache that cannot be cleared is only stale listings
                    pass

    # ---- paths -------------------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """Filesystem path (what fsspec calls take) of a path relative to the root."""
        return f"{self._root_path}/{rel}".rstrip("/") if rel else self._root_path

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        try:
            return self._remote(f"check {self.uri(rel)}", self.fs.exists, self.path(rel))
        except Exception as e:  # noqa: BLE001 - surface auth/endpoint errors with the URI
            if isinstance(e, StorageError):  # already says what and where
                raise
            raise StorageError(f"cannot check {self.uri(rel)}: {e}") from e

    # ---- small files ------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.is_local:
            atomic_write(Path(self.path(rel)), data)
            return
        try:
            self._remote(f"write {self.uri(rel)}", self.fs.pipe_file, self.path(rel), data)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, StorageError):  # already says what and where
                raise
            raise StorageError(f"cannot write {self.uri(rel)}: {e}") from e

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self._remote(f"read {self.uri(rel)}", self.fs.cat_file, self.path(rel))
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001
            if isinstance(e, StorageError):  # already says what and where
                raise
            raise StorageError(f"cannot read {self.uri(rel)}: {e}") from e

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8"))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel).decode("utf-8"))

    # ---- folders ----------------------------------------------------------------------------------------
    @contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A fresh local folder to build an output in; removed afterwards unless it was published (renamed)."""
        if self.is_local:
            base = Path(self.path(".staging"))
        else:
            base = self.cache_dir / ".staging"
        base.mkdir(parents=True, exist_ok=True)
        remove_dead_stages(base)
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{_HOST}-{os.getpid()}-", dir=base))
        try:
            yield stage
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def publish_dir(self, stage: Path, rel: str, marker_name: str, marker: dict) -> bool:
        """Move/upload a staged folder to `rel`, commit marker last. Returns False if `rel` was already
        committed (outputs are immutable: an existing committed folder is never overwritten)."""
        if self.exists(f"{rel}/{marker_name}"):
            return False
        (stage / marker_name).write_text(json.dumps(marker, indent=1, sort_keys=True, ensure_ascii=False))
        if self.is_local:
            final = Path(self.path(rel))
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # uncommitted leftovers of a killed run: never read, safe to replace
                shutil.rmtree(final)
            os.rename(stage, final)
            return True
        try:
            files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != marker_name)
            for p in files:
                dest = f"{rel}/{p.relative_to(stage).as_posix()}"
                self._remote(f"upload {self.uri(dest)}", self.fs.put_file, str(p), self.path(dest))
            self._remote(f"upload {self.uri(rel)}/{marker_name}", self.fs.put_file, str(stage / marker_name),
                         self.path(f"{rel}/{marker_name}"))
        except Exception as e:  # noqa: BLE001
            if isinstance(e, StorageError):  # already says what and where
                raise
            raise StorageError(f"cannot upload to {self.uri(rel)}: {e}") from e
        return True

    def list_files(self, rel: str = "") -> list[str]:
        """Paths of every file under `rel`, relative to the root, sorted (recursive; folder markers skipped)."""
        base = self.path(rel)
        try:
            found = self._remote(f"list {self.uri(rel)}", self.fs.find, base)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, StorageError):  # already says what and where
                raise
            raise StorageError(f"cannot list {self.uri(rel)}: {e}") from e
        out = []
        for p in found:
            r = p[len(self._root_path):].lstrip("/")
            if r and not r.endswith("/"):
                out.append(r)
        return sorted(out)

    def fingerprints(self, rel: str = "") -> dict[str, str]:
        """{path: fingerprint} of every file under `rel`: size and modification time on a folder, ETag and size on
        an object store, from one listing. A changed fingerprint means the bytes may have changed (the content
        hash that the reader records then decides); the same fingerprint means they did not."""
        if self.is_local:
            base = Path(self.path(rel))
            out = {}
            for p in base.rglob("*"):
                try:
                    if p.is_file():
                        st = p.stat()
                        out[p.relative_to(Path(self.root)).as_posix()] = f"{st.st_size}-{st.st_mtime_ns}"
                except OSError:  # vanished or unreadable: the reader quarantines it, the fingerprint says so
                    out[p.relative_to(Path(self.root)).as_posix()] = "unreadable"
            return dict(sorted(out.items()))
        found = self._remote(f"list {self.uri(rel)}", self.fs.find, self.path(rel), detail=True)
        return dict(sorted((p[len(self._root_path):].lstrip("/"),
                            stable_hash({"etag": str(i.get("ETag", "")), "size": i.get("size")}))
                           for p, i in found.items() if not p.endswith("/")))

    def local_file(self, rel: str) -> Path:
        """A local copy of one file (the file itself on a local root). On an object store the object is streamed
        to a cache file keyed by its ETag and size (a changed object gets a new copy), written to a temp name and
        renamed, so a killed download never leaves a half file that looks complete."""
        if self.is_local:
            return Path(self.path(rel))
        try:
            info = self._remote(f"stat {self.uri(rel)}", self.fs.info, self.path(rel))
        except Exception as e:  # noqa: BLE001
            if isinstance(e, StorageError):  # already says what and where
                raise
            raise StorageError(f"cannot stat {self.uri(rel)}: {e}") from e
        tag = stable_hash({"etag": str(info.get("ETag", "")), "size": info.get("size")})
        target = self.cache_dir / self.protocol / "files" / tag / self._root_path / rel
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        try:
            self._remote(f"download {self.uri(rel)}", self.fs.get_file, self.path(rel), str(tmp))
            os.replace(tmp, target)
        except Exception as e:  # noqa: BLE001
            tmp.unlink(missing_ok=True)
            if isinstance(e, StorageError):  # already says what and where
                raise
            raise StorageError(f"cannot download {self.uri(rel)}: {e}") from e
        return target

    def local_dir(self, rel: str) -> Path:
        """A local folder with the contents of `rel` (the folder itself on a local root; a cached download,
        keyed by the content-addressed path, on an object store)."""
        if self.is_local:
            return Path(self.path(rel))
        target = self.cache_dir / self.protocol / self._root_path / rel
        if target.exists():
            return target
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        tmp.mkdir(parents=True)
        try:
            self._remote(f"download {self.uri(rel)}", self.fs.get, self.path(rel) + "/", str(tmp) + "/",
                         recursive=True)
        except Exception as e:  # noqa: BLE001
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, StorageError):  # already says what and where
                raise
            raise StorageError(f"cannot download {self.uri(rel)}: {e}") from e
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race with identical content
            shutil.rmtree(tmp, ignore_errors=True)
        return target
