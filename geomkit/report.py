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


def file_in_the_way(folder: Path) -> Optional[str]:
    """Why `folder` cannot be a folder ("is a file", "lies under X, which is a file"), or None."""
    for parent in [folder, *folder.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return "is a file" if parent == folder else f"lies under {parent}, which is a file"
            return None
    return None


def prepare_out(path, option: str = "--out") -> Path:
    """Create the output folder (and parents) and check it is writable, or fail in one line.
    The folders it creates are remembered, so that a command refused afterwards removes them
    again while they are still empty (`remove_created_if_empty`)."""
    if path is None or not str(path).strip():
        raise GeomkitError(f"{option} is empty; give a folder (e.g. {option} runs/mine)")
    out = Path(path).expanduser()
    where = file_in_the_way(out)
    if where:
        raise GeomkitError(f"{option} {path}: not a writable folder ({where}); give a folder")
    missing = [p for p in [out, *out.parents] if not p.exists()]
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
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a result file gets the usual permissions
    try:
        yield Path(tmp)
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
