"""Where commands write: never over an input, nothing left behind on failure.

Every command names its inputs (model and its external data, calibration folders, recipe, job,
statistics, validation report) and its outputs (model and ``OUT.data``, statistics, bundle, HTML
copy). ``refuse_aliasing`` compares them once, before anything is written: by resolved path
(symlinks, ``..``) and by device and inode (hard links). ``AllOrNothing`` creates the folders an
output needs and takes back every file and folder it made if the command fails after all.
Temporaries are named ``.onnxquant-tmp-<pid namespace>-<pid>-...``; ``clean_stale`` removes
those of dead runs.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from onnxquant.errors import UsageError

TMP_PREFIX = ".onnxquant-tmp-"


def _pid_namespace() -> str:
    """Which process-id space our pids belong to (a container has its own): a temporary is only
    judged stale by a run that sees the same pids."""
    try:
        return re.sub(r"\D", "", os.readlink("/proc/self/ns/pid")) or "0"
    except OSError:
        return "0"


_NAMESPACE = _pid_namespace()
_STALE = re.compile(re.escape(TMP_PREFIX) + re.escape(_NAMESPACE) + r"-(\d+)-")
# A calibration folder is read flat; a folder with more files than this is not listed file by file.
_MAX_LISTED = 100_000

PathLike = str | os.PathLike


def _keys(path: Path) -> set[tuple]:
    """What identifies the file ``path`` names: its resolved path, and its inode when it exists."""
    keys: set[tuple] = {("path", os.path.realpath(path))}
    with contextlib.suppress(OSError, ValueError):
        st = os.stat(path)
        keys.add(("inode", st.st_dev, st.st_ino))
    return keys


def model_files(path: PathLike) -> list[Path]:
    """The model file and every external data file it names (read without loading any data).

    A model that cannot be parsed here is left to the loader to report; only its own path is given.
    """
    path = Path(path)
    files = [path]
    try:
        import onnx

        from onnxquant.graphs import iter_tensors

        if not path.is_file():
            return files
        model = onnx.load_model(str(path), load_external_data=False)
        for tensor in iter_tensors(model):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                for entry in tensor.external_data:
                    if entry.key == "location" and entry.value and "\0" not in entry.value:
                        files.append(path.parent / entry.value)
    except Exception:  # a malformed model is reported by load_model, with its exit code
        pass
    return list(dict.fromkeys(files))


def data_files(path: PathLike) -> list[Path]:
    """A calibration folder's files (it is read flat), or the file itself."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    listed = [path]
    with contextlib.suppress(OSError):
        for k, child in enumerate(os.scandir(path)):
            if k >= _MAX_LISTED:
                break
            listed.append(Path(child.path))
    return listed


def model_outputs(path: PathLike) -> list[Path]:
    """A written model and the ``OUT.data`` file that may be written beside it."""
    path = Path(path)
    return [path, path.with_name(path.name + ".data")]


def refuse_aliasing(inputs: Iterable[PathLike | None], outputs: Iterable[PathLike | None]) -> None:
    """Refuse (exit 2) an output that is one of the inputs, or two outputs that are one file.

    Give expanded lists (``model_files``, ``data_files``, ``model_outputs``); ``None`` is skipped.
    ``inputs`` may be a generator: it is only expanded when some output already exists (an
    output that does not exist yet cannot be an input file), so reading a large model's
    metadata twice is spared in the usual case.
    """
    outputs = [Path(o) for o in outputs if o is not None]
    if not any(os.path.lexists(o) for o in outputs):
        inputs = ()
    seen: dict[tuple, Path] = {}
    for item in inputs:
        if item is None:
            continue
        for key in _keys(Path(item)):
            seen.setdefault(key, Path(item))
    written: dict[tuple, Path] = {}
    for item in outputs:
        if item is None:
            continue
        out = Path(item)
        for key in _keys(out):
            if key in seen:
                raise UsageError(f"{out}: the output would overwrite the input {seen[key]}; choose another path")
            if key in written and written[key] != out:
                raise UsageError(f"{out}: two outputs would be the same file ({written[key]})")
            written[key] = out
        if out.is_dir() and out.suffix.lower() in (".onnx", ".npz", ".html", ".json", ".zip"):
            raise UsageError(f"{out}: is a folder, not a file")
        if out.exists() and not (out.is_file() or out.is_dir()):  # a device, a pipe, a socket
            raise UsageError(f"{out}: is not a regular file; an output is written beside it and renamed over it")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale(folder: Path) -> None:
    """Remove temporaries that killed runs left in ``folder`` (their process is gone)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _STALE.match(entry.name)
            if match is None or _pid_alive(int(match.group(1))):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def temp_dir(folder: Path) -> Path:
    """A private temporary folder in ``folder`` (same file system: a rename puts things in place)."""
    clean_stale(folder)
    return Path(tempfile.mkdtemp(prefix=_prefix(), dir=folder))


def temp_file(folder: Path) -> tuple[int, str]:
    clean_stale(folder)
    return tempfile.mkstemp(prefix=_prefix(), suffix=".tmp", dir=folder)


def _prefix() -> str:
    return f"{TMP_PREFIX}{_NAMESPACE}-{os.getpid()}-"


class AllOrNothing:
    """Track what a command creates; on failure, remove it all (files, then created folders).

    ``with all_or_nothing() as made: made.parents(out); ...write...; made.file(out)``. Nested
    uses share the outermost tracker, so a later step's failure takes back an earlier step's file.
    """

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.folders: list[Path] = []

    def parents(self, path: Path) -> Path:
        """Create ``path``'s missing parent folders (remembered, to be removed on failure)."""
        missing = []
        parent = Path(path).parent
        while not parent.exists():
            missing.append(parent)
            if parent.parent == parent:
                break
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{path}: {parent} is not a folder")
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise UsageError(f"{path}: cannot create the folder {folder} ({exc.strerror or exc})") from exc
            self.folders.append(folder)
        return Path(path).parent

    def file(self, path: Path) -> None:
        self.files.append(Path(path))

    def undo(self) -> None:
        for path in reversed(self.files):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        for folder in reversed(self.folders):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self.files.clear()
        self.folders.clear()


_CURRENT: contextvars.ContextVar[AllOrNothing | None] = contextvars.ContextVar("onnxquant_outputs", default=None)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[AllOrNothing]:
    """The command's tracker (the outermost one when nested); undone on any exception."""
    outer = _CURRENT.get()
    if outer is not None:
        yield outer
        return
    tracker = AllOrNothing()
    token = _CURRENT.set(tracker)
    try:
        yield tracker
    except BaseException:
        tracker.undo()
        raise
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def write_errors(path: PathLike) -> Iterator[None]:
    """An operating-system error while writing ``path`` (read-only folder, full disk, file-size
    limit) is one line with exit 2, not a traceback."""
    try:
        yield
    except UsageError:
        raise
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from exc


@contextlib.contextmanager
def scratch() -> Iterator[str]:
    """A private working folder in the system's temporary folder, removed after use; those of
    killed runs are removed by the next run (``clean_stale``)."""
    path = temp_dir(Path(tempfile.gettempdir()))
    try:
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
