"""text8 (Mahoney): 10^8 characters of English Wikipedia in 27 characters (' ' and a-z).

Downloaded once from its canonical address into ``<cache>/text8/text8.zip`` (see ``vmd.runtime.cache``),
streamed to a temporary name and renamed only after its size and SHA-1 match the published
ones, so a failed or altered download leaves nothing behind. A ``text8.zip`` put there by hand
is checked the same way and used. The standard splits, first 90M characters train, next 5M
valid, last 5M test, are cached as uint8 token ids (``splits-v1.safetensors``, with the settings
and a sha256 in its metadata); a cached file that does not match is made again from the zip.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vmd.runtime.cache import CACHE_HINT, cache_dir, check_writable, read_checked, write_checked
from vmd.runtime.errors import DataError
from vmd.tasks.tokenizers import CharTokenizer, UnknownChar, describe

URL = "http://mattmahoney.net/dc/text8.zip"
ZIP_SIZE = 31_344_016
ZIP_SHA1 = "6c70299b93b7e1f927b42cd8f6ac1a31547c7a2e"
MEMBER = "text8"
TEXT_SIZE = 100_000_000
TEXT_SHA1 = "0dc3edebc970dcc96137e7deda4d9995af9d93de"
SPLITS = (90_000_000, 5_000_000, 5_000_000)  # train, valid, test, in this order
CHARS = " abcdefghijklmnopqrstuvwxyz"  # token ids in this order
NAMES = ("train", "valid", "test")
FORMAT_VERSION = "1"
TIMEOUT = 60  # seconds without an answer before a download is given up
BLOCK = 1 << 20

Progress = Callable[[int, int, str], None]


def zip_path() -> Path:
    return cache_dir() / "text8" / "text8.zip"


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            h.update(chunk)
    return h.hexdigest()


def _published(size: int, sha1: str) -> str:
    return f"{size:,} bytes, SHA-1 {sha1}"


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def _download(dest: Path, progress: Progress) -> None:
    """Stream ``URL`` to a temporary name beside ``dest``; rename it to ``dest`` only once its size
    and SHA-1 match. On any failure (offline, a proxy, a full disk, Ctrl-C) the temporary file goes."""
    import urllib.request

    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    label = f"downloading text8 from {URL} -> {dest}"
    offline = (f"put text8.zip ({ZIP_SIZE:,} bytes, from {URL}) at {dest} by hand, "
               "or train on your own text with --set task.file=PATH")
    h, size = hashlib.sha1(), 0
    try:
        try:
            response = urllib.request.urlopen(URL, timeout=TIMEOUT)
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise DataError(f"could not download text8 from {URL} ({_reason(e)}); {offline}") from None
        with response, open(tmp, "wb") as f:
            progress(0, ZIP_SIZE, label)
            while True:
                try:
                    chunk = response.read(BLOCK)
                except (OSError, http.client.HTTPException) as e:
                    raise DataError(f"the download of text8 from {URL} broke off ({_reason(e)}); {offline}") from None
                if not chunk:
                    break
                size += len(chunk)
                if size > ZIP_SIZE:  # not the published zip: no need to fetch the rest
                    break
                h.update(chunk)
                try:
                    f.write(chunk)
                except OSError as e:
                    raise DataError(f"could not write the data cache {tmp} ({e.strerror or e}); {CACHE_HINT}") from None
                progress(min(size, ZIP_SIZE), ZIP_SIZE, label)
            f.flush()
            os.fsync(f.fileno())
        if (size, h.hexdigest()) != (ZIP_SIZE, ZIP_SHA1):
            got = f"more than {ZIP_SIZE:,} bytes" if size > ZIP_SIZE else _published(size, h.hexdigest())
            raise DataError(f"the text8.zip downloaded from {URL} is not the published one ({got}; expected "
                            f"{_published(ZIP_SIZE, ZIP_SHA1)}); refused, nothing kept (a proxy may have altered it); "
                            f"{offline}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_zip(path: Path) -> None:
    """A zip already in the cache (put there by hand, or downloaded before) is the published one."""
    size = path.stat().st_size
    sha1 = _sha1(path) if size == ZIP_SIZE else "(not computed)"
    if (size, sha1) != (ZIP_SIZE, ZIP_SHA1):
        raise DataError(f"{path} is not text8.zip as published ({_published(size, sha1)}; expected "
                        f"{_published(ZIP_SIZE, ZIP_SHA1)}); delete it to download it again, or put the original there")


def _text(path: Path) -> bytes:
    """The zip's ``text8`` member, checked against its published size and SHA-1."""
    try:
        with zipfile.ZipFile(path) as z:
            data = z.read(MEMBER)
    except KeyError:
        raise DataError(f"{path} has no member {MEMBER!r}; delete it to download it again") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path} cannot be unpacked ({e}); delete it to download it again") from None
    sha1 = hashlib.sha1(data).hexdigest()
    if (len(data), sha1) != (TEXT_SIZE, TEXT_SHA1):
        raise DataError(f"{path}: its member {MEMBER!r} is not text8 as published ({_published(len(data), sha1)}; "
                        f"expected {_published(TEXT_SIZE, TEXT_SHA1)}); delete it to download it again")
    return data


def _settings() -> dict[str, str]:
    return {"format": FORMAT_VERSION, "text_sha1": TEXT_SHA1, "splits": ",".join(map(str, SPLITS)), "chars": CHARS}


def _load_cached(path: Path) -> dict[str, torch.Tensor] | str:
    """The cached splits, or the reason they cannot be used."""
    return read_checked(path, _settings(), {n: ((k,), torch.uint8) for n, k in zip(NAMES, SPLITS)})


def splits(progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """{"train", "valid", "test"}: text8's standard splits as uint8 token ids (``CHARS`` order),
    from the cache, else made from the zip (downloaded first if it is not there)."""
    progress = progress or (lambda *a: None)
    root = cache_dir()
    path = root / "text8" / f"splits-v{FORMAT_VERSION}.safetensors"
    why = ""
    if path.exists():
        cached = _load_cached(path)
        if not isinstance(cached, str):
            progress(1, 1, f"using cached text8 splits: {path}")
            return cached
        why = f" (the cached file could not be used: {cached})"
    check_writable(root, path.parent)
    source = zip_path()
    if source.exists():
        label = f"checking {source} (size and SHA-1)"
        progress(0, 1, label)
        _check_zip(source)
        progress(1, 1, label)
    else:
        _download(source, progress)
    label = f"unpacking and tokenising text8 -> {path}{why}"
    progress(0, 1, label)
    try:
        ids = CharTokenizer(CHARS).encode(_text(source).decode("latin-1"))
    except UnknownChar as e:  # only a text8 of other hashes (a test's) can get here
        raise DataError(f"{source}: its text holds {describe(e.char)}, not one of text8's 27 characters") from None
    ids = torch.from_numpy(ids.astype(np.uint8))
    bounds = np.cumsum((0,) + SPLITS)
    parts = {name: ids[bounds[i]:bounds[i + 1]].clone() for i, name in enumerate(NAMES)}
    write_checked(path, parts, _settings())
    progress(1, 1, label)
    return parts
