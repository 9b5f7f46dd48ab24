"""Read a dataset's files from its ZIP archive or from the extracted folder, through one interface.

Entries are named by their path inside the archive (``LIDC-IDRI-slices/LIDC-IDRI-0001/...``);
an extracted folder must keep that layout, so both sources give the same names.
"""
from __future__ import annotations

import hashlib
import threading
import zipfile
from pathlib import Path

from medad.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class Archive:
    """A read-only view of a dataset's files, from a ZIP or a folder."""

    def __init__(self, path: Path, top: str):
        self.path = Path(path)
        self.top = top
        self.is_zip = self.path.is_file()
        self._local = threading.local()
        if self.is_zip:
            try:
                with zipfile.ZipFile(self.path) as zf:
                    self._names = [n for n in zf.namelist() if not n.endswith("/")]
            except zipfile.BadZipFile as exc:
                raise DataError(f"{self.path}: not a readable ZIP archive ({exc}); re-download it") from exc
        else:
            root = self.path / top
            self._names = sorted(
                f"{top}/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file()
            )

    @classmethod
    def locate(cls, data_dir: Path, archive_name: str, top: str, download_page: str = "") -> "Archive":
        """Find ``archive_name`` (a .zip) or its extracted folder ``top`` in ``data_dir``.

        Looked for, in order: ``data_dir/archive_name``, ``data_dir/top/``,
        ``data_dir/<archive stem>/top/``. Missing: a DataError that lists all three.
        """
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DataError(f"data directory {data_dir} does not exist (set MEDAD_DATA or pass --data-dir to a folder holding the archives)")
        found = cls.present(data_dir, archive_name, top)
        if found is not None:
            return cls(found, top)
        stem = archive_name[:-4] if archive_name.endswith(".zip") else archive_name
        zip_path = data_dir / archive_name
        where = f" Download it from {download_page}." if download_page else ""
        raise DataError(
            f"{archive_name} not found in {data_dir}: expected one of {zip_path}, "
            f"{data_dir / top}/ or {data_dir / stem / top}/ (an extracted copy keeping the archive's layout).{where}"
        )

    @staticmethod
    def present(data_dir: Path, archive_name: str, top: str) -> Path | None:
        """Where :meth:`locate` would read from (the ZIP, or the folder holding ``top``), without opening it; None if absent."""
        data_dir = Path(data_dir)
        stem = archive_name[:-4] if archive_name.endswith(".zip") else archive_name
        if (data_dir / archive_name).is_file():
            return data_dir / archive_name
        for folder in (data_dir, data_dir / stem):
            if (folder / top).is_dir():
                return folder
        return None

    def fingerprint(self) -> str:
        """An extracted folder's state now: a digest of every file's name, size and modification time.

        A folder has no published checksum; this is what stamps and caches of its
        contents are keyed on, so an edited, blanked or replaced file (or one more,
        or one fewer) changes it. Hashing every file's bytes would cost as much as
        reading the dataset, so this trusts sizes and mtimes, as make does.
        """
        if self.is_zip:
            raise ValueError("fingerprint() is for an extracted folder; a ZIP is identified by its SHA-256")
        digest = hashlib.sha256()
        root = self.path / self.top
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            st = file.stat()
            digest.update(f"{file.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def names(self) -> list[str]:
        return list(self._names)

    def where(self, name: str) -> str:
        """An entry as a message names it: ``archive.zip:entry`` or the extracted file's path."""
        return f"{self.path}:{name}" if self.is_zip else str(self.path / name)

    def images_in(self, folder: str, suffixes=IMAGE_SUFFIXES, what: str = "images") -> list[str]:
        """The image entries directly in ``folder``, sorted; hidden ones (``.ipynb_checkpoints/``, ``.DS_Store``) left out.

        A folder with no images, or holding anything else, is a DataError: a
        loader never skips a file of the dataset without saying so.
        """
        prefix = folder.rstrip("/") + "/"
        found = []
        for name in sorted(n for n in self._names if n.startswith(prefix)):
            rest = name[len(prefix):]
            if any(part.startswith(".") for part in rest.split("/")):
                continue  # editor/OS copies, not part of the dataset
            if "/" in rest or not rest.lower().endswith(suffixes):
                raise DataError(f"{self.where(name)}: unexpected entry; {prefix} should hold only {what} ({', '.join(suffixes)})")
            found.append(name)
        if not found:
            raise DataError(f"{self.where(prefix)}: no {what} found; expected {', '.join(suffixes)} files in this folder")
        return found

    def _zip(self) -> zipfile.ZipFile:
        # One handle per thread: ZipFile is not safe to share across DataLoader workers/threads.
        zf = getattr(self._local, "zf", None)
        if zf is None:
            zf = self._local.zf = zipfile.ZipFile(self.path)
        return zf

    def read(self, name: str) -> bytes:
        try:
            if self.is_zip:
                return self._zip().read(name)
            return (self.path / name).read_bytes()
        except (KeyError, FileNotFoundError) as exc:
            raise DataError(f"{self.path}: entry {name} is missing") from exc
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{self.path}: entry {name} cannot be read ({exc})") from exc

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_local", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        kind = "zip" if self.is_zip else "folder"
        return f"Archive({self.path}, {kind}, {len(self._names)} files)"
