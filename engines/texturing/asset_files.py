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
        if fmt == "mtl":
            line = strip_mtl_options(line)
        if line:
            found.append(line)
    return found


def gltf_file_uris(doc: dict) -> list[str]:
    """The URIs of the files a glTF JSON refers to (buffers and images; data: URIs are not files)."""
    uris = []
    for item in [*doc.get("buffers", []), *doc.get("images", [])]:
        uri = item.get("uri") if isinstance(item, dict) else None
        if isinstance(uri, str) and not uri.startswith("data:") and uri not in uris:
            uris.append(uri)
    return uris


def gltf_uri_path(uri: str) -> str:
    """The file path a glTF URI names, as the spec reads it: percent-decoded (`Normal%20Map.png` is the file
    `Normal Map.png`), backslashes as slashes, `.` steps removed. `AssetFiles.locate` refuses what leaves."""
    return AssetFiles("the .gltf", lambda path: None).locate(uri)


def match_gltf_parts(uris: list[str], names: list[str]) -> tuple[dict[str, str], list[str]]:
    """The files sent beside a .gltf, matched to the URIs it uses.

    A part may be named by the URI as the .gltf writes it (`Normal%20Map.png`) or by the file name that URI
    decodes to (`Normal Map.png`). Returns ({part name: file path inside the asset}, URIs no part carries).
    A part the .gltf does not name keeps its own (cleaned) name. Raises MeshError for a name that leaves the
    asset (absolute, `..`, a scheme)."""
    by_uri = {uri: gltf_uri_path(uri) for uri in uris}
    wanted = set(by_uri.values())
    paths = {}
    for name in names:
        if name in by_uri:
            paths[name] = by_uri[name]
            continue
        clean = posixpath.normpath(name.replace("\\", "/").strip())
        if not name.strip() or _SCHEME.match(clean) or clean.startswith("/") or clean.split("/")[0] == "..":
            raise outside(name, "a `files` part")
        paths[name] = clean if clean in wanted or "%" not in clean else gltf_uri_path(name)
    carried = set(paths.values())
    return paths, [uri for uri, path in by_uri.items() if path not in carried]


def strip_mtl_options(ref: str) -> str:
    """An MTL map's file name without the options that come first (`-s 1 1 1`, `-bm 0.5`, `-clamp on`)."""
    return re.sub(r"^(?:-\w+(?:\s+(?:-?[\d.]+|on|off))*\s+)*", "", ref.strip(), flags=re.IGNORECASE)


def mtl_textures(text: bytes) -> list[tuple[str, str]]:
    """(material name, diffuse texture reference) for each `newmtl` with a `map_Kd` in an MTL text."""
    out, material = [], None
    for raw in text.decode("utf-8", errors="replace").splitlines():
        line = raw.strip()
        key, _, rest = line.partition(" ")
        if key.lower() == "newmtl":
            material = rest.strip()
        elif key.lower() == "map_kd" and material is not None and rest.strip():
            out.append((material, strip_mtl_options(rest)))
    return out


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
        self.material_textures: list[tuple[str, str]] = []  # (MTL material, map_Kd) of MTLs read

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
                target = _case_insensitive(root, relative)  # assets made on Windows: `Tex.JPG` for tex.jpg
                if target is None:
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
        sub.refused, sub.missing, sub.material_textures = self.refused, self.missing, self.material_textures
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
                # trimesh hands an MTL map line over whole: its options first (`-s 1 1 1 tex.jpg`).
                key = strip_mtl_options(key)
                try:
                    path = files.locate(key)
                    data = files._read(path)
                    if data is not None and path.lower().endswith(".mtl"):
                        files.check_text("mtl", data)
                        files.material_textures.extend(mtl_textures(data))
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
            # Assets made on Windows name `Tex.JPG` as `tex.jpg`: one entry that matches but for case.
            folded = [i for n, i in self.entries.items() if n.casefold() == path.casefold()]
            if len(folded) != 1:
                return None
            info = folded[0]
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


def _case_insensitive(root: Path, relative: str) -> Path | None:
    """The one file under `root` whose path matches `relative` but for letter case, if there is exactly one
    (every step inside `root`: a component is never `..`, `locate` removed those)."""
    here = root
    for part in relative.split("/"):
        if not here.is_dir() or here.is_symlink():
            return None
        matches = [c for c in here.iterdir() if c.name.casefold() == part.casefold()]
        if len(matches) != 1:
            return None
        here = matches[0]
    target = here.resolve()
    return target if target.is_file() and target.is_relative_to(root) else None
