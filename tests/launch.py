"""The one launcher of the multi-process tests: a script (or `-m module`) on several CPU processes under torchrun
or `accelerate launch`, as a user launches it, with a free rendezvous port and one thread per process.

Imported as a module (pytest puts tests/ on sys.path); the workers it starts find `sau_testing` and the other
helpers because `worker_env` puts tests/ (and the repository root) on their PYTHONPATH.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ACCELERATE_CONFIGS = ROOT / "recipes" / "accelerate"


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it), for the processes' rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(*paths: Path | str, **extra: str) -> dict:
    """The environment of a launched process: this one's, with the repository root, tests/ and `paths` first on
    PYTHONPATH, one thread per process, offline, and `extra` on top."""
    path = os.pathsep.join([str(ROOT), str(TESTS), *map(str, paths), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false", **extra)


def run(cmd: list[str], env: dict | None = None, ok: bool = True, timeout: int = 900,
        cwd: Path | str = ROOT) -> subprocess.CompletedProcess:
    """Run `cmd` and capture its output; with `ok`, fail the test with the output's tail unless it exits 0."""
    proc = subprocess.run(cmd, env=env or worker_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def torchrun(script: Path | str, *args: str, nproc: int = 2, **kw) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc script args` (DDP on CPU: the worker picks gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), str(script), *map(str, args)]
    return run(cmd, **kw)


def accelerate_launch(config: Path | str, *args: str, num_processes: int | None = None,
                      **kw) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file config args`: `config` is a file name under recipes/accelerate/ or a path;
    `args` is the script and its arguments, or `-m module ...`."""
    config = Path(config) if os.sep in str(config) else ACCELERATE_CONFIGS / config
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--main_process_port", str(free_port())]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    return run(cmd + [str(a) for a in args], **kw)
