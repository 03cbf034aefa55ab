"""Files the toolkit reads and writes: only regular files, never its own input, always atomically.

Every command that writes user-visible output goes through `atomic_output`: the data appears under
its name whole or not at all, a `.gz` name gets gzip, the file follows the umask, an existing target
that is not a regular file (a FIFO, `/dev/null`) or that is one of the command's inputs (also
through symlinks and hard links) is refused before anything is written, and the temporary file is
deleted on any exception, Ctrl-C, and the SIGTERM / SIGHUP that `ernie_ops.cli.main` turns into
exceptions.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import signal
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from ernie_ops.errors import UserError

PathLike = str | os.PathLike[str]


def regular_file(path: PathLike, what: str = "file") -> Path:
    """PATH if it names a readable regular file (through symlinks); a UserError naming it otherwise.

    A FIFO would block the reader forever and `/dev/zero` would be read until memory runs out, so
    neither is opened."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist", hint="check the path") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(
                f"{what} {path} is a symlink loop", hint="point the link at a real file"
            ) from None
        raise UserError(f"cannot read {what} {path}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is a directory", hint="name a file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(
            f"{what} {path} is not a regular file ({_kind(st.st_mode)})",
            hint="copy the data into a regular file first",
        )
    return path


def check_output(path: PathLike, inputs: Iterable[PathLike] = ()) -> Path:
    """PATH if writing it replaces neither an input nor something that is not a regular file."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return path  # nothing there yet (a dangling symlink is replaced, as `mv` would)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"output {path} is a symlink loop", hint="remove it or write elsewhere") from None
        raise UserError(f"cannot write {path}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(
            f"output {path} exists and is not a regular file ({_kind(st.st_mode)}); it is not replaced",
            hint="write to a regular file",
        )
    for source in inputs:
        with contextlib.suppress(OSError):
            if os.path.samefile(source, path):
                raise UserError(
                    f"output {path} is the input {source}: writing it would destroy the input",
                    hint="write to another file",
                )
    return path


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


_ENDING_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(
    path: PathLike, inputs: Iterable[PathLike] = (), compress: bool | None = None
) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces PATH only when the block ends without an error.

    `compress` defaults to the name: `.gz` is written as gzip."""
    path = check_output(path, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The signals that end a command are held back from creating the temporary file until the
    # cleanup below is armed: a SIGTERM in between would otherwise leave the file behind.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _ENDING_SIGNALS)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask like any file
        with os.fdopen(fd, "wb", buffering=1 << 20) as raw:
            if compress if compress is not None else path.name.endswith(".gz"):
                with gzip_writer(raw) as gz:
                    yield gz  # type: ignore[misc]
            else:
                yield raw
        check_output(path, inputs)  # nothing became a FIFO or an input while we wrote
        os.replace(tmp, path)
    except BaseException:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def gzip_writer(raw: IO[bytes]) -> gzip.GzipFile:
    """A gzip member written into RAW as every output of the toolkit is compressed; mtime 0 and no
    name: the same data gives the same bytes (fingerprints, caches)."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)


@contextlib.contextmanager
def unnamed_files(directory: PathLike, count: int) -> Iterator[list[int]]:
    """COUNT temporary files in DIRECTORY (on the output's file system, for `append_file`), open
    for reading and writing and unlinked at once: nothing is left behind whatever ends the process,
    SIGKILL included; their space is freed when the last descriptor closes (a forked child's too)."""
    fds: list[int] = []
    try:
        for _ in range(count):
            held = signal.pthread_sigmask(signal.SIG_BLOCK, _ENDING_SIGNALS)
            try:  # no ending signal between creating the name and unlinking it
                fd, name = tempfile.mkstemp(dir=directory, prefix=".part.", suffix=".tmp")
                os.unlink(name)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            fds.append(fd)
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def append_file(source_fd: int, target_fd: int) -> None:
    """Append the whole of the file open as SOURCE_FD at TARGET_FD's position (which advances), in
    the kernel where it can (copy_file_range, else sendfile, else through a buffer)."""
    size, start = os.fstat(source_fd).st_size, os.lseek(target_fd, 0, os.SEEK_CUR)
    for copy in (_copy_file_range, _sendfile, _read_write):
        try:
            copy(source_fd, target_fd, os.lseek(target_fd, 0, os.SEEK_CUR) - start, size)
            return
        except OSError as err:  # not on this kernel or between these file systems: the next way
            if err.errno not in _CANNOT_COPY or copy is _read_write:
                raise


_CANNOT_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}


def _copy_file_range(source_fd: int, target_fd: int, done: int, size: int) -> None:
    while done < size and (n := os.copy_file_range(source_fd, target_fd, size - done, done)):
        done += n
    _check_appended(done, size)


def _sendfile(source_fd: int, target_fd: int, done: int, size: int) -> None:
    while done < size and (n := os.sendfile(target_fd, source_fd, done, size - done)):
        done += n
    _check_appended(done, size)


def _read_write(source_fd: int, target_fd: int, done: int, size: int) -> None:
    while done < size and (block := os.pread(source_fd, min(1 << 20, size - done), done)):
        view = memoryview(block)
        while view:
            view = view[os.write(target_fd, view) :]
        done += len(block)
    _check_appended(done, size)


def _check_appended(done: int, size: int) -> None:
    if done < size:
        raise OSError(errno.EIO, f"the file shrank while it was appended ({done} of {size} bytes)")


def write_text_atomic(path: PathLike, text: str, inputs: Iterable[PathLike] = ()) -> Path:
    """`Path.write_text`, atomically and with the checks of `atomic_output`."""
    with atomic_output(path, inputs, compress=False) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def delete_older(directory: PathLike, pattern: str, cutoff: float) -> list[Path]:
    """Delete DIRECTORY's files matching PATTERN last written before CUTOFF (a `time.time()`); the
    deleted paths. One another process deleted first is passed over (retention runs concurrently)."""
    gone = []
    for path in Path(directory).glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                gone.append(path)
    return gone
