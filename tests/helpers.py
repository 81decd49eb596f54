"""Helpers shared by the CLI tests."""

from geomkit.cli import main


def run_cli(capsys, *argv):
    """Run `geomkit ARGV` in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, text):
    """Bad input: exit status 2 and exactly one line on stderr containing `text`, no traceback."""
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err and text in lines[0], err


def random_images(folder, shapes, seed=0, suffixes=(".png",)):
    """Write random RGB images of the given (height, width) shapes into `folder` (cycling through
    `suffixes` for the file formats) and return the folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, (h, w) in enumerate(shapes):
        name = f"{k}{suffixes[k % len(suffixes)]}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder
