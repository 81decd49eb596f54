"""The thin output layer: atomic writes of results.json, CSV, PNG and safetensors, and tables
printed for people. Nothing half-written is ever left: every file is written to a temporary
sibling and renamed into place."""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Optional

from geomkit.errors import GeomkitError


_CREATED: list = []  # folders prepare_out created, in order (see remove_created_if_empty)


def _lexists(p: Path) -> bool:
    """Whether `p` exists (a dangling link counts); False, not an exception, for a name the OS refuses."""
    try:
        os.lstat(p)
        return True
    except (OSError, ValueError):
        return False


def _isdir(p: Path) -> bool:
    try:
        return p.is_dir()
    except (OSError, ValueError):
        return False


def file_in_the_way(folder: Path) -> Optional[str]:
    """Why `folder` cannot be a folder ("is a file", "lies under X, which is a file"), or None."""
    for parent in [folder, *folder.parents]:
        if _lexists(parent):
            if not _isdir(parent):
                return "is a file" if parent == folder else f"lies under {parent}, which is a file"
            return None
    return None


# ---- what the operating system will refuse to create ------------------------------------------
NAME_MAX = 255  # bytes per path component (ext4, xfs, btrfs, APFS, NTFS in UTF-16 units)
PATH_MAX = 4096  # bytes for the whole path (Linux)
# file systems that hold no user files: the kernel's views of processes, devices and settings
SPECIAL_FS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
              "configfs", "pstore", "bpf", "fusectl", "mqueue", "hugetlbfs", "binfmt_misc", "autofs", "efivarfs", "rpc_pipefs"}
SPECIAL_ROOTS = ("/proc", "/sys", "/dev")  # where /proc/self/mounts cannot be read


def _mount_type(path: str) -> Optional[str]:
    """The file-system type of the mount holding `path` (an existing, resolved path), or None."""
    best, kind = "", None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        return next(("proc" for r in SPECIAL_ROOTS if path == r or path.startswith(r + "/")), None)
    return kind


def path_problem(path, kind: str = "folder") -> Optional[str]:
    """Why the operating system cannot create `path` (a `kind` to write: "folder" or "file"), or
    None: a name component over NAME_MAX bytes, a path over PATH_MAX, a special file system (/proc,
    /sys, /dev), or a folder on the way that this user cannot write into. Nothing is created."""
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    for part in p.parts:
        n = len(os.fsencode(part))
        if n > NAME_MAX:
            shown = part if len(part) <= 24 else part[:20] + "..."
            return f"the name {shown!r} is {n} bytes long; file systems allow at most {NAME_MAX} bytes per name"
    if len(os.fsencode(str(p))) >= PATH_MAX:
        return f"the path is {len(os.fsencode(str(p)))} bytes long; the system allows at most {PATH_MAX - 1}"
    existing = next((q for q in [p, *p.parents] if _lexists(q)), Path("/"))
    real = os.path.realpath(existing)
    fs = _mount_type(real)
    if fs in SPECIAL_FS:
        return f"{real} lies on {fs}, a special file system of the kernel that holds no files of yours; give a folder on a disk"
    if _isdir(Path(real)) and not os.access(real, os.W_OK | os.X_OK):
        what = "is" if existing == p else f"would be created in {existing}, which is"
        return f"{what} not writable by this user (permission denied or a read-only file system)"
    return None


def check_out_path(path, option: str = "--out", kind: str = "folder") -> Path:
    """One check of an output path before any work: not empty, no file in the way of a folder, and
    nothing the OS would refuse (`path_problem`). Every command runs it on every path it writes."""
    if path is None or not str(path).strip():
        raise GeomkitError(f"{option} is empty; give a {kind} (e.g. {option} runs/mine)")
    p = Path(os.path.expanduser(str(path)))
    why = path_problem(p, kind)
    if why is None:
        where = file_in_the_way(p if kind == "folder" else p.parent)
        if where and kind == "file":
            where = f"lies under {p.parent}, which is a file" if where == "is a file" else where
        why = where
    if why:
        raise GeomkitError(f"{option} {path}: cannot be written ({why})" if kind == "file" else
                           f"{option} {path}: not a writable folder ({why}); give a folder")
    return p


# ---- runs of different kinds do not share a folder ------------------------------------------
# files only one command writes: a folder holding one of them belongs to that kind of run
RUN_SIGNATURES = {
    "neighbors": ("neighbors.csv",),
    "norms": ("norms.csv", "norm_histogram.png"),
    "probe-position": ("accuracy.csv", "position_probe.png"),
    "residual-angles": ("angles.csv", "residual_angles.png"),
    "attenuation": ("attenuation.csv", "attenuation.png"),
    "inspect": ("inspect.png",),
    "compare": ("compare.csv", "compare.md"),
    "evaluate": ("scores.csv",),
    "generate": ("grid.png",),
    "interpolate": ("mix-00-r0.00.safetensors",),
    "train": ("train_log.jsonl", "checkpoints"),
}


def run_kind(folder) -> Optional[tuple[str, str]]:
    """(command, file) of the geomkit run whose output `folder` holds, or None."""
    folder = Path(folder)
    for command, names in RUN_SIGNATURES.items():
        for name in names:
            if _lexists(folder / name):
                return command, name
    if any(folder.glob("mix-*-r*.safetensors")):
        return "interpolate", next(folder.glob("mix-*-r*.safetensors")).name
    return None


def check_run_kind(folder, command: str, option: str = "--out") -> None:
    """Refuse to write the output of `command` into a folder another kind of run already wrote
    (its files would mix: two results.json, figures of both)."""
    found = run_kind(folder)
    if found and found[0] != command:
        other, name = found
        raise GeomkitError(f"{option} {folder} holds the output of `geomkit {other}` ({name}); its results.json would be "
                           f"overwritten by this {command} run: choose another {option} (e.g. runs/{command})")


def prepare_out(path, option: str = "--out", command: Optional[str] = None) -> Path:
    """Create the output folder (and parents) and check it is writable, or fail in one line.
    `command` names the kind of run: a folder holding another kind's output is refused
    (`check_run_kind`). The folders it creates are remembered, so that a command refused
    afterwards removes them again while they are still empty (`remove_created_if_empty`)."""
    out = check_out_path(path, option)
    if command is not None and _isdir(out):
        check_run_kind(out, command, option)
    missing = [p for p in [out, *out.parents] if not _lexists(p)]
    mark = len(_CREATED)
    if missing:
        _CREATED.append(missing[-1])  # the topmost folder this call creates
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".geomkit-write-test-", delete=True)
        probe.close()
    except (OSError, PermissionError) as exc:
        remove_created_if_empty(mark)
        raise GeomkitError(f"{option} {path}: not a writable folder ({exc.strerror or exc})") from None
    return out


def created_mark() -> int:
    """A marker for `remove_created_if_empty`: folders created after it are the caller's."""
    return len(_CREATED)


def remove_created_if_empty(mark: int = 0) -> None:
    """Remove the folders prepare_out created since `mark` when nothing was written into them
    (only empty subfolders): a refused command leaves no empty --out folder behind."""
    while len(_CREATED) > mark:
        folder = Path(_CREATED.pop())
        try:
            if folder.is_dir() and not any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
                for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                    sub.rmdir()
                folder.rmdir()
        except OSError:
            pass


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it"):
    """A progress bar on stderr for a long phase, saying what is happening (`desc`); it clears
    itself when the phase ends. GEOMKIT_PROGRESS=0 turns every bar off."""
    import sys

    from tqdm.auto import tqdm

    off = os.environ.get("GEOMKIT_PROGRESS", "1").strip().lower() in ("0", "no", "off", "false")
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=off, file=sys.stderr)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix); it replaces `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)  # mkstemp makes it 0600; a result file gets the usual permissions
    try:
        yield Path(tmp)
        # again after writing: some writers replace the file rather than fill it (safetensors' save_file
        # creates it anew, 0600), and a file other tools cannot read is no use to them
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(obj: Any):
    """Plain JSON: tensors and numpy values become lists/floats, NaN/inf become null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, obj) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n")
    return Path(path)


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv(path, frame) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_figure(path, fig) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def save_tensors(path, tensors: dict, metadata: Optional[dict] = None) -> Path:
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path)


def figure(width: float = 6.4, height: float = 4.0):
    """A matplotlib figure on the non-interactive backend (safe on machines with no screen)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def display_width(text: str) -> int:
    """Columns a string takes in a terminal: East Asian wide/full-width characters take two,
    combining marks and zero-width characters none (so CJK tokens line up in tables)."""
    import unicodedata

    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def pad(text: str, width: int) -> str:
    """`text` left-aligned in `width` terminal columns (str.ljust counts characters, not columns)."""
    return text + " " * max(0, width - display_width(text))


def table_text(rows: Iterable[dict], floatfmt: str = "{:.4f}") -> str:
    """A plain aligned text table for the terminal."""
    rows = list(rows)
    if not rows:
        return "(no rows)"
    cols = list(rows[0].keys())

    def fmt(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(display_width(c), *(display_width(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(pad(v, w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


def markdown_table(rows: Iterable[dict], floatfmt: str = "{:.3f}") -> str:
    rows = list(rows)
    if not rows:
        return ""
    cols = list(rows[0].keys())

    def fmt(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return "" if v is None else str(v).replace("|", "\\|")

    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)
