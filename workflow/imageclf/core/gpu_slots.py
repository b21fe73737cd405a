"""GPU slots on one machine without a cluster: `imageclf gpus K -- COMMAND...`.

Each GPU of the machine is a set of lock files (seats) in one machine-wide folder (LOCK_DIR, or
$IMAGECLF_GPU_LOCK_DIR). A job that needs K GPUs takes K of them with non-blocking `flock`s (all K
or none, so two jobs never deadlock holding half of what they need; `--share S` lets up to S jobs
share a GPU), waits while too few are free, then runs its
command with CUDA_VISIBLE_DEVICES set to the GPUs it holds. The command replaces this process
(exec) and inherits the locks' descriptors: the operating system releases them when the job's last
process ends, however it ends (SIGKILL and out-of-memory kills included), and every process on the
machine sees the same locks, so two Snakemake runs (two projects) never hand out a GPU twice.

The GPUs to hand out are those the local Snakemake exported ($IMAGECLF_GPU_IDS: resources.gpu_ids,
or the machine's, workflow/rules/gpus.smk). Without that list, and under SLURM (SLURM_JOB_ID set:
the scheduler has already given the job its GPUs), the command runs as it is. Torch-free: the
Snakefile asks `machine_gpus()` while it builds the DAG.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Where the lock files live: one folder for the whole machine (not $TMPDIR, which may be a
# folder of one user or one session), world-writable with the sticky bit like /tmp itself.
LOCK_DIR = "/tmp/imageclf-gpu-locks"
LOCK_DIR_ENV = "IMAGECLF_GPU_LOCK_DIR"
# The GPU ids a job may take, as the Snakefile found them (resources.gpu_ids, or the machine's).
# Set and empty: none (the jobs run as they are).
IDS_ENV = "IMAGECLF_GPU_IDS"
# For tests only: pretend this machine has these GPUs ("4" for 0-3, or "0,2,3").
FAKE_ENV = "IMAGECLF_FAKE_GPUS"
# Each GPU is SEATS seats (lock files): a job takes all of them, or SEATS // S with gpu_share S, so
# up to S such jobs share it (S divides SEATS: 1, 2, 3, 4 or 6), and a job that needs a whole GPU
# waits for them all. Snakemake counts seats too (the `gpu_seats` resource, workflow/rules/gpus.smk).
SEATS = 12
# What the job's own log says about its GPUs (core/logs.py writes it there).
HELD_ENV = "IMAGECLF_GPU_SLOTS"
SHARE_ENV = "IMAGECLF_GPU_SHARE"
TAKEN_AT_ENV = "IMAGECLF_GPU_TAKEN_AT"
WAITED_ENV = "IMAGECLF_GPU_WAITED"


def parse_ids(text: str) -> list[str]:
    """'0,2,3' -> ['0', '2', '3']; a bare count '4' under FAKE_ENV -> ['0', '1', '2', '3']."""
    return [part.strip() for part in text.split(",") if part.strip()]


def under_scheduler() -> bool:
    """Whether a cluster scheduler (SLURM) placed this process and chose its GPUs."""
    return bool(os.environ.get("SLURM_JOB_ID"))


def detected_gpus() -> list[str]:
    """The ids of the GPUs this machine shows processes, without importing torch: those of
    CUDA_VISIBLE_DEVICES when it is set (empty or -1: none), else nvidia-smi's indices, else one
    per GPU the NVIDIA driver lists (/proc/driver/nvidia/gpus)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = parse_ids(visible)
        return [] if ids[:1] == ["-1"] else ids
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        ids = re.findall(r"^GPU (\d+):", out, flags=re.M)
        if ids:
            return ids
    driver = Path("/proc/driver/nvidia/gpus")
    count = len(list(driver.iterdir())) if driver.is_dir() else 0
    return [str(i) for i in range(count)]


def machine_gpus() -> list[str]:
    """The GPU ids to hand out on this machine: FAKE_ENV's (tests), else detected_gpus()."""
    fake = os.environ.get(FAKE_ENV)
    if fake is not None:
        fake = fake.strip()
        return [str(i) for i in range(int(fake))] if fake.isdigit() else parse_ids(fake)
    return detected_gpus()


def job_gpus() -> list[str]:
    """The GPU ids a job may take: those a local Snakemake exported (IDS_ENV; set it to run
    `imageclf gpus` by hand), else none. Never found by the job itself: a job of another
    scheduler (its GPUs chosen by it, perhaps each seen as GPU 0) runs as it is."""
    return parse_ids(os.environ.get(IDS_ENV) or "")


def lock_dir() -> Path:
    folder = Path(os.environ.get(LOCK_DIR_ENV) or LOCK_DIR)
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        try:  # every user's jobs share it, as they share the GPUs
            os.chmod(folder, 0o1777)
        except OSError:
            pass
    return folder


def lock_path(folder: Path, gpu: str, seat: int) -> Path:
    return folder / f"gpu{re.sub(r'[^A-Za-z0-9._-]', '_', gpu)}.seat{seat}.lock"


def try_lock(path: Path) -> int | None:
    """A descriptor holding an exclusive flock on `path`, or None when another process holds it.
    Opened read-only (flock needs no write access), so another user's lock file serves too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except PermissionError:  # another user's lock file that a strict umask made unreadable: taken
        return None
    try:
        os.fchmod(fd, 0o644)  # readable by every user's jobs, whatever the umask (when it is ours)
    except OSError:
        pass
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def try_seats(folder: Path, gpu: str, wanted: int) -> list[int] | None:
    """`wanted` free seats of one GPU, locked (their descriptors), or None (and nothing held)."""
    fds = []
    for seat in range(SEATS):
        fd = try_lock(lock_path(folder, gpu, seat))
        if fd is not None:
            fds.append(fd)
            if len(fds) == wanted:
                return fds
    for fd in fds:
        os.close(fd)
    return None


def try_acquire(count: int, ids: list[str], folder: Path, share: int = 1) -> list[tuple[str, list[int]]] | None:
    """`count` GPUs of `ids`, with SEATS // share free seats on each, locked ([(id, fds)]), or
    None (and nothing held). The first GPUs with room come first: shared jobs fill a GPU before
    they start on the next, which stays whole for a job that needs all of it."""
    held = []
    for gpu in ids:
        fds = try_seats(folder, gpu, SEATS // share)
        if fds is not None:
            held.append((gpu, fds))
            if len(held) == count:
                return held
    for _, fds in held:
        for fd in fds:
            os.close(fd)
    return None


def acquire(count: int, ids: list[str], share: int = 1, poll: float = 0.5,
            say=None) -> tuple[list[tuple[str, list[int]]], float]:
    """Wait for `count` GPUs of `ids` (each shared by up to `share` jobs); ([(id, fds)], seconds
    waited). `say` hears one line when the job has to wait, and one when it stops waiting."""
    if SEATS % share:
        raise SystemExit(f"imageclf gpus: --share {share}: a GPU is shared by 1, 2, 3, 4 or 6 jobs")
    if count > len(ids):
        raise SystemExit(f"imageclf gpus: this job needs {count} GPUs, but this machine has "
                         f"{len(ids)} to hand out ({','.join(ids) or 'none'})")
    folder = lock_dir()
    start = time.monotonic()
    waiting = False
    while True:
        held = try_acquire(count, ids, folder, share)
        if held is not None:
            waited = time.monotonic() - start
            if waiting and say:
                say(f"imageclf gpus: took GPU {','.join(g for g, _ in held)} after waiting {waited:.0f} s")
            return held, waited
        if not waiting and say:
            shared = f" (each shared by up to {share} jobs)" if share > 1 else ""
            say(f"imageclf gpus: waiting for {count} free GPU(s){shared} of {','.join(ids)}: all taken by "
                f"other jobs (locks in {folder})")
        waiting = True
        time.sleep(poll * random.uniform(0.8, 1.2))


def gpu_environment(held: list[str], ids_source_physical: bool, waited: float, share: int = 1) -> dict:
    """The environment entries of a job that holds the GPUs `held`."""
    env = {"CUDA_VISIBLE_DEVICES": ",".join(held), HELD_ENV: ",".join(held), SHARE_ENV: str(share),
           TAKEN_AT_ENV: f"{time.time():.3f}", WAITED_ENV: f"{waited:.1f}"}
    if ids_source_physical and "CUDA_DEVICE_ORDER" not in os.environ:
        # nvidia-smi's numbering (PCI bus order), which CUDA's default order may not follow
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env


def main(argv: list[str]) -> None:
    """imageclf gpus K [--share S] [--] COMMAND...: run COMMAND on K GPUs of its own, each shared by
    up to S such jobs (see the module doc)."""
    usage = ("usage: imageclf gpus K [--share S] [--] COMMAND [ARGS...]   (K: GPUs the command needs; "
             "S: jobs that may share each, 1 2 3 4 or 6)")
    if len(argv) < 2 or not argv[0].isdigit():
        print(usage, file=sys.stderr)
        raise SystemExit(2)
    count, command, share = int(argv[0]), argv[1:], 1
    if command[:1] == ["--share"]:
        if len(command) < 2 or not command[1].isdigit() or int(command[1]) < 1:
            print(usage, file=sys.stderr)
            raise SystemExit(2)
        share, command = int(command[1]), command[2:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(usage, file=sys.stderr)
        raise SystemExit(2)
    ids = [] if count == 0 or under_scheduler() else job_gpus()
    if ids:
        held, waited = acquire(count, ids, share, say=lambda line: print(line, file=sys.stderr, flush=True))
        # without CUDA_VISIBLE_DEVICES or an exported list the ids are the driver's own numbers
        physical = os.environ.get("CUDA_VISIBLE_DEVICES") is None and os.environ.get(FAKE_ENV) is None
        os.environ.update(gpu_environment([gpu for gpu, _ in held], physical, waited, share))
        for _, fds in held:
            for fd in fds:
                os.set_inheritable(fd, True)  # the command holds the locks until its last process ends
    # no GPU to hand out (none here, none asked for, or SLURM's own): the command as it is
    try:
        os.execvp(command[0], command)
    except OSError as error:
        print(f"imageclf gpus: cannot run {command[0]}: {error}", file=sys.stderr)
        raise SystemExit(127) from None
