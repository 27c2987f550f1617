"""A FUSE file system for the tests: a read-only view of a folder in which some files never
answer a read, like a stalled network mount, or fail their reads with EIO, like a flaky disk
or NFS mount.

    python tests/fuse_stall.py MOUNTPOINT SOURCE_DIR NAME [NAME ...]
    python tests/fuse_stall.py --eio-until FLAG_FILE MOUNTPOINT SOURCE_DIR NAME [NAME ...]

Every file under SOURCE_DIR appears under MOUNTPOINT; reading one of the NAMEs (relative
paths) blocks until this process ends, or, with ``--eio-until``, fails with EIO until
FLAG_FILE exists (the storage has recovered). Their size is that of the source file, so they
look like ordinary videos (not empty). Runs in the foreground; stop it with SIGTERM, then
``fusermount -u -z MOUNTPOINT``. Needs libfuse2 and fusepy (tests only).
"""

from __future__ import annotations

import errno
import os
import sys
import threading

from fuse import FUSE, FuseOSError, Operations


class StallingView(Operations):
    def __init__(self, source: str, stalled: set[str], eio_until: str | None = None) -> None:
        self.source = os.path.realpath(source)
        self.stalled = {"/" + name.lstrip("/") for name in stalled}
        self.eio_until = eio_until
        self.forever = threading.Event()          # never set: a stalled read waits on it

    def _real(self, path: str) -> str:
        return os.path.join(self.source, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._real(path))
        except OSError as exc:
            raise FuseOSError(exc.errno) from None
        return {key: getattr(st, key) for key in ("st_mode", "st_size", "st_nlink", "st_uid",
                                                  "st_gid", "st_atime", "st_mtime", "st_ctime")}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._real(path))

    def open(self, path, flags):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        return os.open(self._real(path), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        if path in self.stalled:
            if self.eio_until is None:
                self.forever.wait()
            elif not os.path.exists(self.eio_until):
                raise FuseOSError(errno.EIO)
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)


def main(argv: list[str]) -> None:
    eio_until = None
    if argv[:1] == ["--eio-until"]:
        eio_until, argv = argv[1], argv[2:]
    mountpoint, source, *stalled = argv
    # multithreaded: a stalled read must not stop the others; direct_io: no page cache, so
    # every read reaches us
    FUSE(StallingView(source, set(stalled), eio_until), mountpoint, foreground=True,
         nothreads=False, ro=True, direct_io=True)


if __name__ == "__main__":
    main(sys.argv[1:])
