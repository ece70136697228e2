"""The parsed-table cache: a CSV file is parsed once, and every later run, sweep trial and eval maps the result.

Layout: <root>/tables/<key>/ per (file, data options), key = a hash of the file's real path,
the options that shape the parse (target, features, ignore, categorical, dtype) and FORMAT.
An entry holds numbers.npy (the numeric columns, memory-mapped on load), lines.npy,
target.npy (a numeric target) or text_<i>.npy (text columns, the target's labels), and
meta.json, written last: the format, the options, the column names, and the source
file's size, mtime, ctime, inode and sha256.

Trust rules: an entry is used only if meta.json parses, names this FORMAT, this file and
these options, and every array loads with the shape and dtype meta.json records. If the
file's size, mtime, ctime and inode are unchanged it is the same file; otherwise its
sha256 decides (ctime changes on every write, even when mtime is put back, so an edit
that keeps size and mtime is still rehashed). Anything else (a changed file, a truncated
array, a foreign folder) is rebuilt, never trusted.

Concurrency: a builder holds an exclusive fcntl lock on <key>.lock, checks again for an
entry built while it waited, writes into a temporary folder and publishes it with one
rename, so readers see a whole entry or none and concurrent trials parse once.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnctl.data.files import CsvColumns, parse_csv

FORMAT = 1
ENV_DIR = "NNCTL_CACHE_DIR"
SETTINGS = ("auto", "off")
# Builds in this process (tests and the bench read it); builds.log counts across processes.
BUILDS = 0


def cache_root(setting: str | None = "auto", base_dir: Path | None = None) -> Path | None:
    """The cache folder for data.cache: auto (NNCTL_CACHE_DIR, else XDG_CACHE_HOME/nnctl, else
    ~/.cache/nnctl), off (None), or a path (relative to base_dir, the spec's folder)."""
    if setting is None or setting == "auto":
        if os.environ.get(ENV_DIR):
            return Path(os.environ[ENV_DIR]).expanduser()
        xdg = os.environ.get("XDG_CACHE_HOME")
        return (Path(xdg) if xdg else Path.home() / ".cache") / "nnctl"
    if setting == "off":
        return None
    path = Path(setting).expanduser()
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


def _stamp(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


# The digests this process computed, by file and stamp: a stale entry's rebuild checks the
# hash in _load, again under the lock, and stamps the new entry with it, which read the whole
# file three times before the parse read it a fourth. A changed stamp is another key.
_digests: dict[tuple, str] = {}


def _sha256(path: Path, st: os.stat_result) -> str:
    key = (os.path.realpath(path), *_stamp(st).values())
    if key not in _digests:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if len(_digests) >= 16:
            _digests.clear()
        _digests[key] = digest
    return _digests[key]


class TableCache:
    """Parsed CSV tables under `root`/tables; `parse` stands in for files.parse_csv.

    status: after a parse, "hit" (mapped from the cache) or "built" (parsed and stored).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / "tables"
        self.status: str | None = None

    @staticmethod
    def key(path: Path, **kw) -> tuple[str, str, dict]:
        """(entry name, the file's real path, the options that shape its parse) for parse_csv's keywords."""
        options = {k: kw.get(k) for k in ("features", "target", "categorical", "ignore")}
        options["dtype"] = np.dtype(kw.get("dtype", np.float32)).name
        source = os.path.realpath(path)
        key = hashlib.sha256(json.dumps([FORMAT, source, options], sort_keys=True).encode()).hexdigest()[:24]
        return key, source, options

    def describe(self) -> str:
        shown = {"hit": "hit", "built": "parsed and stored"}
        return f"{self.dir}" + (f" ({shown.get(self.status, self.status)})" if self.status else "")

    # -------------------------------------------------------------------- parse through the cache

    def parse(self, *, path: Path, check: Callable[[list[str]], None] | None = None, **kw) -> CsvColumns:
        """parse_csv(path, check=check, **kw), from the cache when it holds this file with these options."""
        path = Path(path)
        key, source, options = self.key(path, **kw)
        entry = self.dir / key
        name = kw.get("name") or path.name
        table = self._load(entry, source, options, name)
        if table is None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                lock = open(self.dir / f"{key}.lock", "a+b")
            except OSError as err:
                # a read-only home or cache folder must not stop training: parse without it
                self.status = f"not writable: {err.strerror or err}"
                return parse_csv(path, check=check, **kw)
            with lock:
                fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes
                table = self._load(entry, source, options, name)   # built while we waited?
                if table is None:
                    self.status = "built"
                    return self._build(entry, path, source, options, check, kw)
        if check is not None:
            check(table.header)
        self.status = "hit"
        return table

    def _build(self, entry: Path, path: Path, source: str, options: dict, check, kw: dict) -> CsvColumns:
        started = time.perf_counter()
        # stamp and hash before parsing: if the file changes meanwhile, the next run sees a
        # different stamp and hash and parses again
        try:
            st = os.stat(path)
            digest = _sha256(path, st)
        except OSError:
            return parse_csv(path, check=check, **kw)   # parse_csv names the problem
        table = parse_csv(path, check=check, **kw)
        tmp = self.dir / f".{entry.name}.{os.getpid()}.tmp"
        try:
            return self._publish(entry, tmp, table, source, options, st, digest, started)
        except OSError as err:
            # a full disk or a read-only folder: this run uses what it parsed, the next tries again
            shutil.rmtree(tmp, ignore_errors=True)
            self.status = f"not writable: {err.strerror or err}"
            return table

    def _publish(self, entry: Path, tmp: Path, table: CsvColumns, source: str, options: dict,
                 st: os.stat_result, digest: str, started: float) -> CsvColumns:
        global BUILDS
        # under the lock no one else builds this entry: folders left by a builder that was
        # killed midway are garbage
        for stale in [*self.dir.glob(f".{entry.name}.*.tmp"), *self.dir.glob(f".{entry.name}.*.old")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        arrays: dict[str, np.ndarray] = {"numbers": table.numbers, "lines": table.lines}
        if table.target is not None:
            arrays["target"] = table.target
        text_names = list(table.text)
        for i, c in enumerate(text_names):
            arrays[f"text_{i}"] = table.text[c]
        for stem, a in arrays.items():
            with open(tmp / f"{stem}.npy", "wb") as f:
                np.save(f, a, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        meta = {
            "format": FORMAT, "source": source, "options": options, "name": table.name,
            "header": table.header, "numeric": table.numeric, "text": text_names,
            "rows": int(len(table.lines)), "file": {**_stamp(st), "sha256": digest},
            "shapes": {k: [list(a.shape), a.dtype.str] for k, a in arrays.items()},
            "built": time.time(), "parse_seconds": round(time.perf_counter() - started, 3),
        }
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        # publish: move a stale entry aside, then one rename makes the new one visible
        old = self.dir / f".{entry.name}.{os.getpid()}.old"
        if entry.exists():
            os.rename(entry, old)
        os.rename(tmp, entry)
        shutil.rmtree(old, ignore_errors=True)
        BUILDS += 1
        with open(self.dir / "builds.log", "a") as log:
            log.write(json.dumps({"source": source, "rows": meta["rows"], "seconds": meta["parse_seconds"],
                                  "pid": os.getpid()}) + "\n")
        # map what was written: the parsed arrays are freed and every run reads the same thing
        mapped = self._load(entry, source, options, table.name)
        return mapped if mapped is not None else table

    # -------------------------------------------------------------------- load, never trusting

    def _load(self, entry: Path, source: str, options: dict, name: str, restamp: bool = True
              ) -> CsvColumns | None:
        """The entry's arrays if it may be trusted for `source` under `options`, else None.

        restamp=False (`nnctl cache list`) only reads: a file whose stamp changed but whose bytes
        did not is still "fresh", and meta.json keeps its old stamp for the next real load.
        """
        try:
            with open(entry / "meta.json") as f:
                meta = json.load(f)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("source") != source \
                    or meta.get("options") != options:
                return None
            st = os.stat(source)
            stored = meta["file"]
            if _stamp(st) != {k: stored[k] for k in ("size", "mtime_ns", "ctime_ns", "ino")}:
                if st.st_size != stored["size"] or _sha256(Path(source), st) != stored["sha256"]:
                    return None
                if restamp:
                    self._restamp(entry, meta, st)   # same bytes (a copy, a touch): skip the hash next time
            arrays = {}
            for stem, (shape, dtype) in meta["shapes"].items():
                a = np.load(entry / f"{stem}.npy", mmap_mode="r", allow_pickle=False)
                if list(a.shape) != shape or a.dtype.str != dtype:
                    return None
                arrays[stem] = a
            text = {c: np.asarray(arrays[f"text_{i}"]) for i, c in enumerate(meta["text"])}
            return CsvColumns(name=name, header=list(meta["header"]), lines=arrays["lines"],
                              numbers=arrays["numbers"], numeric=list(meta["numeric"]),
                              target=arrays.get("target"), text=text)
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            return None   # missing, truncated or foreign: parse again

    def _restamp(self, entry: Path, meta: dict, st: os.stat_result) -> None:
        meta["file"].update(_stamp(st))
        tmp = entry / f".meta.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, entry / "meta.json")
        except OSError:
            pass   # a read-only cache still works, it just hashes each time

    # -------------------------------------------------------------------- nnctl cache list|clear

    def entries(self) -> list[dict[str, Any]]:
        """One dict per entry: key, source, rows, columns, bytes, built (epoch s), state (fresh/stale/broken)."""
        out = []
        if not self.dir.is_dir():
            return out
        for entry in sorted(p for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            try:
                with open(entry / "meta.json") as f:
                    meta = json.load(f)
                source = meta["source"]
                state = "fresh" if self._load(entry, source, meta["options"], meta["name"], restamp=False) is not None else "stale"
                out.append({"key": entry.name, "source": source, "rows": meta["rows"],
                            "columns": len(meta["numeric"]) + len(meta["text"]), "bytes": size,
                            "built": meta["built"], "state": state})
            except (OSError, ValueError, KeyError, TypeError):
                out.append({"key": entry.name, "source": None, "rows": None, "columns": None, "bytes": size,
                            "built": None, "state": "broken"})
        return out

    def clear(self) -> tuple[int, int]:
        """Remove every entry (and lock files and the build log); returns (entries, bytes) removed."""
        count = total = 0
        if not self.dir.is_dir():
            return 0, 0
        for p in self.dir.iterdir():
            if p.is_dir():
                total += sum(f.stat().st_size for f in p.iterdir() if f.is_file())
                count += not p.name.startswith(".")
                shutil.rmtree(p, ignore_errors=True)
            else:
                total += p.stat().st_size
                p.unlink(missing_ok=True)
        return count, total
