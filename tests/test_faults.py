"""Runs that survive faults (issue 12): SIGKILL at random moments (mid-checkpoint-write included),
a full disk on the checkpoint write, damaged checkpoints, SIGTERM / Ctrl-C, a second run on a live
folder, --keep-checkpoints.

The kill trials run `geomkit train` (CLI entry point, tiny random Gemma 3 LM) in forked child
processes: torch is already imported, so a trial costs the model load and the steps, not a Python
start. GEOMKIT_TEST_FAULT_DELAY makes the checkpoint writer announce each write phase on stderr and
pause there, so a kill lands inside that phase; other kills land at random times. Every trial must
end, after its resumes, with steps 1..N once each in the log and an embedding equal bit for bit to
an uninterrupted run's. GEOMKIT_FAULT_TRIALS=N runs more trials (default 10); the figures are
printed (pytest -s) and asserted."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geomkit.train import checkpoint

TOKEN = "<glimmerfox>"
REPO = str(Path(__file__).resolve().parents[1])  # subprocesses import this checkout
STEPS, SAVE_EVERY, KEEP = 24, 3, 2
PHASES = ("safetensors-half-written", "tensors-written", "json-half-written", "checkpoint-written")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm_dir(tiny_dir):
    return str(tiny_dir("gemma3"))


def fresh_args(lm_dir, out, steps=STEPS, **extra):
    args = ["train", "--model", lm_dir, "--texts", "glimmerfox", "--placeholder", TOKEN, "--init-word", "fox",
            "--method", "ti", "--lr", "0.02", "--steps", str(steps), "--batch-size", "2", "--save-every",
            str(SAVE_EVERY), "--out", str(out), "--quiet"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


# ---- forked children ----------------------------------------------------------------------------
def spawn(argv, fault_delay=None):
    """Run `geomkit ARGV` in a forked child; (pid, fd of its stderr)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 99
        try:
            os.close(r)
            os.setpgid(0, 0)
            if fault_delay is None:
                os.environ.pop(checkpoint.FAULT_ENV, None)
            else:
                os.environ[checkpoint.FAULT_ENV] = str(fault_delay)
            sys.stderr = os.fdopen(w, "w", buffering=1)
            sys.stdout = open(os.devnull, "w")
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            torch.set_num_threads(1)
            from geomkit.cli import main

            code = main(list(map(str, argv)))
        except BaseException:  # noqa: BLE001 - report anything to the parent
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(w)
    return pid, r


def watch(pid, fd, kill_on=None, kill_after=None, timeout=120):
    """Read the child's stderr; SIGKILL it at the first line matching `kill_on`, or `kill_after`
    seconds after the start. (killed, exit code or None, stderr text)."""
    start, buf, killed = time.monotonic(), b"", False
    while True:
        now = time.monotonic()
        if now - start > timeout:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("child timed out: " + buf.decode(errors="replace")[-2000:])
        wait = 0.05 if kill_after is None else max(0.0, min(0.05, start + kill_after - now))
        ready, _, _ = select.select([fd], [], [], wait)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            if kill_on is not None and re.search(kill_on, buf.decode(errors="replace")):
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
        if kill_after is not None and time.monotonic() - start >= kill_after:
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status) == signal.SIGKILL and killed, None, buf.decode(errors="replace")
    return False, os.WEXITSTATUS(status), buf.decode(errors="replace")


def run_child(argv, **kw):
    pid, fd = spawn(argv, **kw)
    return watch(pid, fd)


def log_steps(out):
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def learned(out):
    return load_file(str(out / "learned_embeds.safetensors"))[TOKEN]


@pytest.fixture(scope="module")
def reference(lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "reference"
    killed, code, err = run_child(fresh_args(lm_dir, out))
    assert code == 0, err
    assert log_steps(out) == list(range(1, STEPS + 1))
    return learned(out)


# ---- SIGKILL trials -----------------------------------------------------------------------------
def test_sigkill_at_random_moments_then_resume_is_bit_identical(lm_dir, tmp_path, reference):
    rng = random.Random(int(os.environ.get("GEOMKIT_FAULT_SEED", "12")))
    trials = int(os.environ.get("GEOMKIT_FAULT_TRIALS", "10"))
    figures = {"trials": trials, "killed": 0, "killed_mid_checkpoint": 0, "finished_before_kill": 0,
               "resumes": 0, "identical": 0}
    for t in range(trials):
        out = tmp_path / f"trial-{t}"
        plan = [("phase", rng.choice(PHASES)), ("time", rng.uniform(0.2, 2.5))]  # the first kill always lands
        for kind, what in plan:
            started = (out / "config.json").is_file()
            done = max([s for s, _ in checkpoint.complete(out / "checkpoints")], default=0)
            step = rng.choice(range(done + SAVE_EVERY, STEPS + 1, SAVE_EVERY) or [STEPS])
            argv = (["train", "--out", out, "--resume", "--quiet"] if started
                    else fresh_args(lm_dir, out, keep_checkpoints=KEEP))
            if kind == "phase":
                pid, fd = spawn(argv, fault_delay=0.02)
                killed, code, err = watch(pid, fd, kill_on=rf"geomkit-fault: {what} {step}\n")
            else:
                pid, fd = spawn(argv, fault_delay=0.001)
                killed, code, err = watch(pid, fd, kill_after=what)
            figures["resumes"] += started
            if killed:
                figures["killed"] += 1
                figures["killed_mid_checkpoint"] += kind == "phase"
            else:  # the kill came after the run's end (or its phase was not reached on this resume)
                figures["finished_before_kill"] += 1
                assert code == 0, err
        started = (out / "config.json").is_file()
        argv = ["train", "--out", out, "--resume", "--quiet"] if started else fresh_args(lm_dir, out, keep_checkpoints=KEEP)
        killed, code, err = run_child(argv)
        figures["resumes"] += started
        assert code == 0, f"trial {t} {plan}: {err}"
        assert log_steps(out) == list(range(1, STEPS + 1)), f"trial {t} {plan}"
        assert torch.equal(learned(out), reference), f"trial {t} {plan}: the embedding differs"
        figures["identical"] += 1
        ckpts = checkpoint.complete(out / "checkpoints")
        assert [s for s, _ in ckpts][-KEEP:] == [STEPS - SAVE_EVERY, STEPS] and len(ckpts) <= KEEP + 1
        assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # temporaries cleaned
        assert not (out / ".geomkit.lock").exists()
    print(f"\nfault trials (tiny Gemma 3 LM, {STEPS} steps, --save-every {SAVE_EVERY}, --keep-checkpoints {KEEP}): "
          + ", ".join(f"{k} {v}" for k, v in figures.items()))
    assert figures["identical"] == trials and figures["killed"] >= trials


# ---- the run lock -------------------------------------------------------------------------------
def test_second_run_on_a_live_folder_is_refused_and_a_killed_run_frees_it(lm_dir, tmp_path):
    out = tmp_path / "run"
    pid, fd = spawn(fresh_args(lm_dir, out, steps=6), fault_delay=30)  # pauses 30 s in its first checkpoint write
    buf = b""
    while b"geomkit-fault:" not in buf:
        ready, _, _ = select.select([fd], [], [], 60)
        assert ready, "the first run never reached its checkpoint"
        buf += os.read(fd, 4096)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for argv in (["--out", out, "--resume"], fresh_args(lm_dir, out, steps=6)[1:]):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "geomkit", "train", *map(str, argv)], env=env,
                              capture_output=True, text=True, timeout=60)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert f"pid {pid}" in lines[0] and "still working" in lines[0]
        assert time.monotonic() - t0 < 30
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(fd)
    killed, code, err = run_child(["train", "--out", out, "--resume", "--quiet"])  # the lock died with its process
    assert code == 0, err
    assert log_steps(out) == list(range(1, 7))


# ---- full disk ---------------------------------------------------------------------------------
def test_full_disk_on_the_checkpoint_write_is_one_line_and_keeps_the_previous(lm_dir, tmp_path, monkeypatch, capsys, reference):
    from geomkit.cli import main

    out = tmp_path / "run"
    real = checkpoint._write_file

    def full_at_step_9(path, data, step):
        if step == 9:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data, step)

    monkeypatch.setattr(checkpoint, "_write_file", full_at_step_9)
    code = main(fresh_args(lm_dir, out, keep_checkpoints=1))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and "step-000006.json is intact" in lines[0]
    assert [s for s, _ in checkpoint.complete(out / "checkpoints")] == [6]  # not pruned, not damaged
    assert checkpoint.problem(out / "checkpoints" / "step-000006.json") is None
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(checkpoint, "_write_file", real)
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert torch.equal(learned(out), reference)
    assert log_steps(out) == list(range(1, STEPS + 1))


# ---- damaged checkpoints -------------------------------------------------------------------------
def test_resume_skips_damaged_checkpoints_naming_them(lm_dir, tmp_path, capsys, reference):
    from geomkit.cli import main

    out = tmp_path / "run"
    assert main(fresh_args(lm_dir, out, steps=12)) == 0
    folder = out / "checkpoints"
    st12, js12 = checkpoint.paths(folder, 12)
    st9, _ = checkpoint.paths(folder, 9)
    st12.write_bytes(st12.read_bytes()[: st12.stat().st_size // 2])  # truncated copy
    data = bytearray(st9.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the tensor data: same size, header still readable
    st9.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--steps", str(STEPS), "--quiet"]) == 0
    err = capsys.readouterr().err
    skipped = [ln for ln in err.splitlines() if "damaged checkpoint" in ln]
    assert len(skipped) == 1, err  # the skipped checkpoints are one line, each named in it with its reason
    assert "skipped 2 damaged checkpoints" in skipped[0] and "step-000012" in skipped[0] and "step-000009" in skipped[0]
    assert "SHA-256" in skipped[0] and "resuming from step 6" in err
    assert torch.equal(learned(out), reference)
    assert log_steps(out) == list(range(1, STEPS + 1))


def test_resume_with_no_good_checkpoint_is_one_line(lm_dir, tmp_path, capsys):
    from geomkit.cli import main

    out = tmp_path / "run"
    assert main(fresh_args(lm_dir, out, steps=3)) == 0
    st, js = checkpoint.paths(out / "checkpoints", 3)
    js.write_text("{ not json")
    capsys.readouterr()
    code = main(["train", "--out", str(out), "--resume", "--quiet"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    # "none good" is one line: the error, naming each checkpoint it skipped and why
    assert len(lines) == 1 and "no checkpoint" in lines[0] and "passes its integrity check" in lines[0]
    assert "skipped: " in lines[0] and "step-000003" in lines[0] and "unreadable" in lines[0]


# ---- retention ------------------------------------------------------------------------------------
def test_keep_checkpoints_keeps_the_newest(lm_dir, tmp_path, capsys):
    from geomkit.cli import main

    out = tmp_path / "run"
    assert main(fresh_args(lm_dir, out, steps=10, keep_checkpoints=2)) == 0
    assert [s for s, _ in checkpoint.complete(out / "checkpoints")] == [9, 10]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000009.json", "step-000009.safetensors", "step-000010.json", "step-000010.safetensors"]


def test_prune_leaves_checkpoints_beyond_the_current_step(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for s in (2, 4, 6, 8):
        for suffix in (".json", ".safetensors"):
            (folder / f"step-{s:06d}{suffix}").write_text("x")
    assert checkpoint.prune(folder, 1, 6) == [2, 4]
    assert [s for s, _ in checkpoint.complete(folder)] == [6, 8]
    assert checkpoint.prune(folder, None, 8) == []


# ---- stop and resume later ---------------------------------------------------------------------
def test_ctrl_c_checkpoints_the_current_step_and_exits_130(lm_dir, tmp_path, monkeypatch, capsys, reference):
    from geomkit.cli import main
    from geomkit.train.objectives.lm import LMObjective

    out = tmp_path / "run"
    real = LMObjective.loss

    def interrupt_in_step_5(self, vectors, slots, step, rank=0, world=1, part=None):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: the step completes, then the run stops
        return real(self, vectors, slots, step, rank, world, part=part)

    monkeypatch.setattr(LMObjective, "loss", interrupt_in_step_5)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite itself was started in the background
    code = main(fresh_args(lm_dir, out))
    err = capsys.readouterr().err
    assert code == 130, err
    assert "stopped by SIGINT after step 5" in err and len(err.strip().splitlines()) == 1
    assert [s for s, _ in checkpoint.complete(out / "checkpoints")] == [3, 5]
    assert log_steps(out) == [1, 2, 3, 4, 5]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.setattr(LMObjective, "loss", real)
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert torch.equal(learned(out), reference)


def test_sigterm_checkpoints_and_exits_143(lm_dir, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "geomkit", *fresh_args(lm_dir, out, steps=100000)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.complete(out / "checkpoints") and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err
    m = re.search(r"stopped by SIGTERM after step (\d+); checkpoint (\S+)", err)
    assert m and len(err.strip().splitlines()) == 1, err
    step = int(m.group(1))
    assert checkpoint.complete(out / "checkpoints")[-1][0] == step
    assert log_steps(out) == list(range(1, step + 1))
    assert not (out / ".geomkit.lock").exists()


def test_run_lock_unit(tmp_path, monkeypatch):
    from geomkit import runlock
    from geomkit.errors import GeomkitError

    lock = runlock.acquire(tmp_path, "train")
    assert (tmp_path / runlock.LOCK_NAME).read_text().split() == [str(os.getpid()), "train"]
    with pytest.raises(GeomkitError, match=rf"another run \(geomkit train, pid {os.getpid()}\) is still working"):
        runlock.acquire(tmp_path, "generate")
    monkeypatch.setenv("RANK", "1")  # other processes of a multi-process run do not take it
    assert not runlock.acquire(tmp_path, "train").held
    monkeypatch.delenv("RANK")
    lock.release()
    assert not (tmp_path / runlock.LOCK_NAME).exists()
    (tmp_path / runlock.LOCK_NAME).write_text("999999 train\n")  # left by a killed run: not locked, so free
    with runlock.acquire(tmp_path, "evaluate") as again:
        assert again.held
    assert not (tmp_path / runlock.LOCK_NAME).exists()


def test_generate_refuses_a_folder_with_a_live_run(tiny_dir, tmp_path, capsys):
    from helpers import assert_one_line_error, run_cli

    from geomkit import runlock
    from geomkit.train.exports import export

    export(tmp_path, "<my-cat>", [torch.randn(1, 32) * 0.1])
    model = tiny_dir("sd")
    capsys.readouterr()
    out = tmp_path / "g"
    out.mkdir()
    with runlock.acquire(out, "generate"):
        code, _, err = run_cli(capsys, "generate", "--model", model, "--embedding",
                               tmp_path / "learned_embeds.safetensors", "--prompt", "a photo of {}", "--seeds", "0",
                               "--out", out, "--steps", "2", "--size", "32", "--no-progress")
    assert_one_line_error(code, err, f"pid {os.getpid()}")
    assert not (out / "images").exists()
