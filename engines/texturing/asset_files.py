"""The files a mesh may read: only its own.

A mesh names other files: a glTF its buffers and images (`uri`), an OBJ its material library (`mtllib`),
an MTL its textures (`map_Kd` ...), a PLY its texture (`comment TextureFile`). Every loader, ours and
trimesh's, reads them through one `AssetFiles`, which can only return bytes of the asset itself:

- `AssetFiles.upload(name)`: a lone uploaded file. Nothing lies beside it (a `data:` URI is the
  document's own bytes and never reaches a resolver). This is what the service's worker uses.
- `AssetFiles.archive(name, entries, base)`: the entries of an uploaded .zip (the multipart `files`
  parts of a .gltf are packed into one zip by the gateway), read with a cap on their real size.
- `AssetFiles.folder(path)`: the CLI on a file of the user's own disk: files in its folder or below.

A reference must be a relative path that stays inside the asset: a scheme (`file:`, `http:`), an
absolute path (`/proc/self/environ`, `C:\\x`) or a `..` that leaves the asset's root is refused by name
(`locate`) before anything is opened, and a symbolic link out of a folder is refused too. Messages name
the reference and the uploaded file, never a server path.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

from engines.errors import MeshError

# RFC 3986 scheme (`file:`, `http:`), and a Windows drive (`C:`), which the same pattern catches.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
#: Entries an uploaded zip may hold; an asset with its textures has tens.
MAX_ZIP_ENTRIES = 4096
_CHUNK = 1 << 20

# Lines of OBJ / MTL / PLY text that name another file (the file name is the line's last word).
_OBJ_REFERENCE = re.compile(rb"^[ \t]*mtllib[ \t]+(.+?)[ \t]*$", re.MULTILINE)
_MTL_REFERENCE = re.compile(
    rb"^[ \t]*(?:map_\w+|bump|disp|decal|refl|norm)[ \t]+(.+?)[ \t]*$", re.MULTILINE | re.IGNORECASE
)
_PLY_REFERENCE = re.compile(rb"^comment[ \t]+TextureFile[ \t]+(.+?)[ \t]*$", re.MULTILINE)


def outside(uri: str, what: str) -> MeshError:
    return MeshError(
        f"{what} refers to '{uri[:200]}', which is outside the upload: only files inside it can be read "
        "(upload the asset as a .zip, or a .gltf with its files as `files` parts, or convert it to .glb)"
    )


def text_references(fmt: str, text: bytes) -> list[str]:
    """The file names an OBJ (`mtllib`), MTL (`map_*`, `bump`...) or PLY (`TextureFile`) text refers to."""
    pattern = {"obj": _OBJ_REFERENCE, "mtl": _MTL_REFERENCE, "ply": _PLY_REFERENCE}.get(fmt)
    if pattern is None:
        return []
    if fmt == "ply":
        end = text.find(b"end_header")
        text = text[: end if end >= 0 else 65536]
    found = []
    for match in pattern.finditer(text):
        line = match.group(1).decode("utf-8", errors="replace").strip()
        if fmt == "mtl":  # options (`-s 1 1 1`, `-bm 0.5`) come first; the file name is what is left
            line = re.sub(r"^(?:-\w+(?:\s+-?[\d.]+)*\s+)*", "", line)
        if line:
            found.append(line)
    return found


class AssetFiles:
    """Resolves the references of one asset to bytes of that asset; refuses everything else by name.

    `read(path)` returns the bytes of a clean relative path from the asset's root, or None when the asset
    has no such file. `base` is the main file's folder inside the asset (references are relative to it).
    """

    def __init__(
        self, name: str, read: Callable[[str], bytes | None], base: str = "", where: str = ""
    ) -> None:
        self.name = name
        self._read = read
        self.base = base
        self.where = where or "in the upload"
        self.refused: list[MeshError] = []  # refusals while a third-party parser (trimesh) asked
        self.missing: list[str] = []

    # ---- constructors -----------------------------------------------------------------------------

    @classmethod
    def upload(cls, name: str) -> AssetFiles:
        """A lone uploaded file: it can refer to nothing beside itself."""
        return cls(name, lambda path: None, where="in the upload (a lone file has no files beside it)")

    @classmethod
    def archive(cls, name: str, entries: ZipEntries, base: str = "") -> AssetFiles:
        return cls(name, entries.read, base, where="in the zip")

    @classmethod
    def folder(cls, path: Path, max_bytes: int) -> AssetFiles:
        """The files in `path`'s folder and below (the CLI on the user's own disk); links out are refused."""
        root = path.resolve().parent

        def read(relative: str) -> bytes | None:
            target = (root / relative).resolve()
            if not target.is_relative_to(root):
                raise outside(relative, path.name)
            if not target.is_file():
                return None
            if target.stat().st_size > max_bytes:
                raise MeshError(f"{path.name}: '{relative}' is over the limit of {max_bytes} bytes")
            return target.read_bytes()

        return cls(path.name, read, where=f"beside {path.name}")

    # ---- resolving -------------------------------------------------------------------------------

    def locate(self, uri: str) -> str:
        """The clean path from the asset's root that `uri` names; MeshError when it would leave the asset."""
        ref = unquote(uri).replace("\\", "/").strip()
        if not ref or "\0" in ref or _SCHEME.match(ref) or ref.startswith("/"):
            raise outside(uri, self.name)
        path = posixpath.normpath(posixpath.join(self.base, ref))
        if path == ".." or path.startswith("../") or path.startswith("/"):
            raise outside(uri, self.name)
        return path

    def get(self, uri: str) -> bytes:
        """The bytes `uri` names; MeshError naming it when it is outside the asset or not in it."""
        data = self._read(self.locate(uri))
        if data is None:
            raise MeshError(f"{self.name} refers to '{uri[:200]}', which is not {self.where}")
        return data

    def check_text(self, fmt: str, text: bytes) -> None:
        """Refuse an OBJ / MTL / PLY text that refers to a file outside the asset (missing ones are fine:
        a lone OBJ names its MTL, which only a zip can carry)."""
        for ref in text_references(fmt, text):
            self.locate(ref)

    def within(self, folder: str) -> AssetFiles:
        sub = AssetFiles(self.name, self._read, posixpath.join(self.base, folder), self.where)
        sub.refused, sub.missing = self.refused, self.missing
        return sub

    def trimesh_resolver(self):  # noqa: ANN201 - a trimesh Resolver, imported lazily
        """This asset's files as a trimesh `Resolver`. trimesh swallows a resolver's errors (a material or
        texture it cannot read is left out), so refusals are kept in `refused` for the caller to raise."""
        from trimesh.resolvers import Resolver

        files = self

        class _AssetResolver(Resolver):
            def __init__(self) -> None:
                pass

            def get(self, key: str) -> bytes:
                try:
                    path = files.locate(key)
                    data = files._read(path)
                    if data is not None and path.lower().endswith(".mtl"):
                        files.check_text("mtl", data)
                except MeshError as e:
                    files.refused.append(e)
                    raise
                if data is None:
                    files.missing.append(key)
                    raise FileNotFoundError(key)
                return data

            def write(self, name: str, data) -> None:  # noqa: ANN001
                raise MeshError("an uploaded asset is read only")

            def namespaced(self, namespace: str):  # noqa: ANN202
                return files.within(namespace).trimesh_resolver()

            def keys(self):  # noqa: ANN202
                return iter(())

        return _AssetResolver()


class ZipEntries:
    """An uploaded zip's files, each read with a cap on its real (decompressed) size: a size field that
    lies cannot make the reader allocate more than `max_bytes`, for one entry or for all of them."""

    def __init__(self, data: bytes, name: str, max_bytes: int) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self._budget = max_bytes
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as e:
            raise MeshError(f"{name}: not a valid zip file ({e})") from None
        if len(infos) > MAX_ZIP_ENTRIES:
            raise MeshError(f"{name}: {len(infos)} zip entries, over the limit of {MAX_ZIP_ENTRIES}")
        self.entries = {
            posixpath.normpath(i.filename): i
            for i in infos
            if not i.is_dir() and not i.filename.startswith("__MACOSX/")
        }
        declared = sum(i.file_size for i in self.entries.values())
        if declared > max_bytes:
            raise MeshError(f"{name}: unpacks to {declared} bytes, over the limit of {max_bytes} bytes")

    def names(self) -> list[str]:
        return list(self.entries)

    def read(self, path: str) -> bytes | None:
        info = self.entries.get(path)
        if info is None:
            return None
        out = bytearray()
        try:
            with self.zip.open(info) as stream:
                while chunk := stream.read(min(_CHUNK, self._budget + 1)):
                    out += chunk
                    if len(out) > self._budget:
                        raise MeshError(
                            f"{self.name}: '{path}' unpacks to more than its size field says; the zip's "
                            f"files may unpack to at most {self.max_bytes} bytes in all"
                        )
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            raise MeshError(f"{self.name}: cannot unpack '{path}' ({type(e).__name__}: {e})") from None
        self._budget -= len(out)
        return bytes(out)
