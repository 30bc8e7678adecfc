"""A real one-node SLURM (munged + slurmctld + slurmd from Debian's packages) on localhost, for tests.

Reusable by any test that submits jobs (the data pipeline's SLURM executor, SLURM launch of training):

    with SlurmCluster(tmp_dir) as cluster:     # or cluster.start() / cluster.stop()
        subprocess.run(["sbatch", "-W", "-p", cluster.partition, "job.sh"], env=cluster.env)

Every path (state, spool, logs, pids, slurm.conf) lives under the given directory and `SLURM_CONF`
points at it, so nothing under /etc/slurm is touched; munged uses the system key and socket
(created if absent). `missing()` says why such a cluster cannot run here (not root, packages absent).
CI needs `apt-get install -y slurm-wlm munge`.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from distributed.dist_launch import free_port

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
MUNGE_SOCKET_DIR = Path("/run/munge")
MUNGE_KEY = Path("/etc/munge/munge.key")


def missing() -> str | None:
    """Why a local SLURM cannot be started here, or None."""
    if os.geteuid() != 0:
        return "a local SLURM needs root (munged and slurmd run as root here)"
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return f"missing {', '.join(absent)}: apt-get install -y slurm-wlm munge"
    return None


def _munge_alive() -> bool:
    encoded = subprocess.run(["munge", "-n"], capture_output=True)
    if encoded.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=encoded.stdout, capture_output=True).returncode == 0


class SlurmCluster:
    """slurmctld + slurmd on this host with one partition; started and stopped by pid."""

    def __init__(self, root: Path, partition: str = "debug", requeue_delay_s: int | None = None):
        """``requeue_delay_s``: how soon a requeued job may start again (SLURM's ``cred_expire``; None
        keeps SLURM's 120 s), with a scheduling pass every second so that it then does."""
        self.root = Path(root)
        self.partition = partition
        self.requeue_delay_s = requeue_delay_s
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._started_munged = False

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count()
        mem_mib = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        r = self.root
        self.conf.write_text(f"""ClusterName=dotsllm-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mib} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        if self.requeue_delay_s is not None:
            with self.conf.open("a") as conf:
                conf.write(f"AuthInfo=cred_expire={self.requeue_delay_s}\n")
                conf.write("SchedulerParameters=bf_interval=1,sched_interval=1\n")

    def _start_munged(self) -> None:
        if _munge_alive():
            return
        if not MUNGE_KEY.exists():
            subprocess.run(["mungekey", "-c", "-k", str(MUNGE_KEY)], check=True)
            shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
        subprocess.run(["munged", "--force"], check=True)
        self._started_munged = True

    def start(self, timeout: float = 60) -> "SlurmCluster":
        self._write_conf()
        self._start_munged()
        subprocess.run(["slurmctld"], env=self.env, check=True)
        subprocess.run(["slurmd"], env=self.env, check=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SLURM node not idle after {timeout} s; see {self.root}/log")

    def stop(self) -> None:
        """Cancels the jobs left, then ends slurmd, slurmctld and (if started here) munged, by their pid files."""
        if (self.root / "slurmctld.pid").exists():
            subprocess.run(["scancel", "--partition", self.partition], env=self.env, capture_output=True)
            for _ in range(100):  # wait up to 10 s for their processes to end
                queued = subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True)
                if queued.returncode or not queued.stdout.strip():
                    break
                time.sleep(0.1)
        pid_files = [self.root / "slurmd.pid", self.root / "slurmctld.pid"]
        if self._started_munged:
            pid_files.append(Path("/run/munge/munged.pid"))
        for pid_file in pid_files:
            try:
                pid = int(pid_file.read_text().strip())
            except (FileNotFoundError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):  # wait up to 10 s for it to exit
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
