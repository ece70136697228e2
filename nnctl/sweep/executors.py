"""Where trials run: local worker processes, or tasks on a Dask cluster; both run a trial the same way.

A trial is one `nnctl train <trials/k/spec.yaml> --runs-dir <trials/k> --quiet` in its own
child process, whichever executor starts it. A process per trial (rather than a
multiprocessing worker calling the trainer) because:
  - a crash, a NaN, a segfault or a memory blow-up ends that trial only, and it is still a
    normal run directory written by the normal `nnctl train` code path;
  - BLAS reads OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS once, when NumPy is
    first imported, so the limit must be in the environment of a fresh process;
  - a running trial can be stopped cleanly: SIGINT makes `nnctl train` mark its run
    `interrupted` (SIGKILL after a grace period), and nothing is left in a shared pool;
  - a Dask task can do exactly the same thing on a remote worker.
The cost is the interpreter start and imports (~0.5 s a trial).

The child starts a watchdog thread: if its parent (the sweep, or the Dask worker) dies
without stopping it, it interrupts itself, so no orphaned training keeps writing into a
sweep directory that is being resumed.

With Dask, the sweep directory must be on a filesystem every worker sees at the same path
(NFS, a shared volume, or one machine): tasks get absolute paths to `trials/k/spec.yaml`
and write their run directories beside it; nnctl must be installed on every worker.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from nnctl.errors import NnctlError
from nnctl.status import CLEAN_ENDS
from nnctl.threads import BLAS_VARS, PARSER_VAR, logical_cpus

DASK_MISSING = 'the dask executor needs dask.distributed: pip install -e ".[dask]"'
STOP_GRACE = 5.0   # seconds a stopped trial gets to mark its run interrupted before SIGKILL

# The child runs `python -m nnctl` itself, after starting the watchdog.
_CHILD = "from nnctl.sweep.executors import child_main; child_main()"


def blas_threads(workers: int, cores: int | None = None) -> int:
    """BLAS threads per trial so `workers` concurrent trials don't oversubscribe the cores."""
    return max(1, (cores or logical_cpus()) // max(1, workers))


def trial_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a trial process: BLAS limited, and the same nnctl importable."""
    env = dict(os.environ if base is None else base)
    for var in (*BLAS_VARS, PARSER_VAR):
        env[var] = str(threads)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NNCTL_SWEEP_PARENT", None)
    return env


def make_job(index: int, spec_path: Path, trial_dir: Path, metric: str, threads: int | None) -> dict[str, Any]:
    """What a worker needs to run one trial (plain data: it crosses to Dask workers by pickle)."""
    return {"index": index, "spec": str(Path(spec_path).resolve()), "trial_dir": str(Path(trial_dir).resolve()),
            "metric": metric, "blas_threads": threads}


# -- one trial ------------------------------------------------------------------------------

def run_trial(job: dict[str, Any], should_stop: Callable[[], bool] = lambda: False,
              on_process: Callable[[subprocess.Popen | None], None] | None = None,
              poll: float = 0.1) -> dict[str, Any]:
    """Run one trial to its end in a child process; return {index, status, metric, run_dir, error, seconds}.

    `should_stop()` is polled while the child runs; once true the child is interrupted.
    """
    from nnctl.runs.sweep_store import open_trial_log, read_trial_log, trial_runs
    trial_dir = Path(job["trial_dir"])
    before = {p.name for p in trial_runs(trial_dir)}
    threads = job.get("blas_threads") or blas_threads(1)
    # A rerun whose interrupted run left a checkpoint continues that run (same result, less work).
    args = (["train", "--resume", job["resume"], "--quiet"] if job.get("resume")
            else ["train", job["spec"], "--runs-dir", str(trial_dir), "--quiet"])
    if job.get("pruning"):
        # the trial reports each epoch to the sweep's study (nnctl.sweep.pruning)
        args += ["--sweep-pruning", json.dumps(job["pruning"], separators=(",", ":"))]
    cmd = [sys.executable, "-c", _CHILD, *args]
    t0 = time.perf_counter()
    stopped = False
    with open_trial_log(trial_dir) as log:     # creates the trial's folder on its first attempt
        offset = log.tell()
        log.write(f"$ nnctl {' '.join(args)}  "
                  f"# {time.strftime('%Y-%m-%dT%H:%M:%S')}, {threads} BLAS threads\n".encode())
        log.flush()
        env = trial_env(threads)
        env["NNCTL_SWEEP_PARENT"] = str(os.getpid())
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        except OSError as err:
            return _result(job, "failed", None, None, f"cannot start the trial: {err}", time.perf_counter() - t0)
        if on_process is not None:
            on_process(proc)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=poll)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if not stopped and should_stop():
                    stopped = True
                    stop_process(proc)
        except BaseException:
            stop_process(proc, grace=0.0)
            raise
        finally:
            if on_process is not None:
                on_process(None)
    seconds = time.perf_counter() - t0
    output = read_trial_log(trial_dir, offset)
    return collect(job, trial_dir, before, rc, output, seconds, stopped)


def stop_process(proc: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """SIGINT the trial's process group (train marks its run interrupted); SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _result(job, status, metric, run_dir, error, seconds) -> dict[str, Any]:
    return {"index": job["index"], "status": status, "metric": metric, "run_dir": run_dir,
            "error": error, "seconds": round(seconds, 3)}


def collect(job: dict[str, Any], trial_dir: Path, before: set[str], rc: int, output: str,
            seconds: float, stopped: bool) -> dict[str, Any]:
    """Turn what the child left (exit code, output, run directory) into a trial result."""
    from nnctl.runs.store import read_run_metrics, read_run_status
    from nnctl.runs.sweep_store import trial_runs
    new = [p for p in trial_runs(trial_dir) if p.name not in before]
    run = new[-1] if new else (Path(job["resume"]) if job.get("resume") else None)
    status_rec = read_run_status(run) if run is not None else None
    run_status = status_rec.get("status") if status_rec is not None else None
    run_dir = str(run) if run is not None else None
    if run_status in CLEAN_ENDS and rc == 0:
        metrics = job.get("metrics") or [job["metric"]]
        values, error = read_metrics(run, metrics)
        res = _result(job, run_status, values[0], run_dir, error, seconds)
        res["epochs"] = (read_run_metrics(run) or {}).get("epochs")
        if len(metrics) > 1:
            res["values"] = values
        return res
    if stopped or rc in (130, -signal.SIGINT):
        return _result(job, "interrupted", None, run_dir, None, seconds)
    error = None
    if status_rec is not None and status_rec.get("error"):
        error = str(status_rec["error"])
    if error is None:
        error = error_text(output, rc)
    return _result(job, "failed", None, run_dir, error, seconds)


def error_text(output: str, rc: int) -> str:
    """The child's own error lines, else the last line it printed, else how it ended."""
    lines = [ln.strip() for ln in output.splitlines()[1:] if ln.strip()]
    errors = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
    if errors:
        return "; ".join(errors)
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return f"the trial process was killed by {name}"
    if lines:
        return lines[-1]
    return f"the trial process exited with code {rc}"


def read_metrics(run: Path, metrics: list[str]) -> tuple[list[float | None], str | None]:
    """Every objective's value (see read_metric); the first problem, if any."""
    values, errors = [], []
    for m in metrics:
        value, error = read_metric(run, m)
        values.append(value)
        if error:
            errors.append(error)
    return values, (errors[0] if errors else None)


def read_metric(run: Path, metric: str) -> tuple[float | None, str | None]:
    """The metric of the weights the run kept, read by the run catalog (runs/ owns the run folder)."""
    from nnctl.runs.catalog import kept_metric
    return kept_metric(run, metric)


def child_main() -> None:
    """Entry of a trial process: a parent-death watchdog, then `python -m nnctl` with our argv."""
    # The pid from the environment, not getppid(): the parent may already be gone by now.
    parent = int(os.environ.get("NNCTL_SWEEP_PARENT") or os.getppid())

    def watch() -> None:
        # a small trial trains an epoch in milliseconds: notice within a few of them
        while os.getppid() == parent:
            time.sleep(0.05)
        # Orphaned: the sweep died without stopping us. Stop as Ctrl-C would, then hard.
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30.0)
        os.kill(os.getpid(), signal.SIGKILL)

    # A worker started in the background may have SIGINT ignored, which Python then keeps
    # ignoring; the sweep stops trials with SIGINT, so make it raise KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=watch, name="nnctl-parent-watchdog", daemon=True).start()
    # `python -m nnctl` from here on, so this module never imports the CLI (the CLI imports it)
    import runpy
    sys.argv = ["nnctl", *sys.argv[1:]]
    runpy.run_module("nnctl", run_name="__main__", alter_sys=True)


# -- executors ------------------------------------------------------------------------------

class LocalExecutor:
    """Up to `workers` trials at once, each a child process watched by a thread of this process."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self.slots = workers
        self.threads = blas_threads(workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nnctl-trial")
        self._stop = threading.Event()
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.workers} local worker{'s' if self.workers != 1 else ''}, {self.threads} BLAS thread(s) each"

    def submit(self, job: dict[str, Any]) -> Future:
        index = job["index"]

        def track(proc: subprocess.Popen | None) -> None:
            with self._lock:
                if proc is None:
                    self._procs.pop(index, None)
                else:
                    self._procs[index] = proc

        return self._pool.submit(run_trial, job, self._stop.is_set, track)

    def stop(self) -> None:
        """Interrupt every running trial (SIGINT, then SIGKILL after a grace period)."""
        self._stop.set()

    def kill(self) -> None:
        """Kill every running trial now (a second Ctrl-C)."""
        self._stop.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise NnctlError(DASK_MISSING) from None
    return distributed


def run_trial_task(job: dict[str, Any], stop_event: str) -> dict[str, Any]:
    """A trial as a Dask task: the same child process, stopped when the sweep sets `stop_event`."""
    import distributed
    if not job.get("blas_threads"):
        # A remote worker: share its own cores among the trials it runs at once.
        try:
            worker = distributed.get_worker()
            nthreads = getattr(worker, "nthreads", None) or getattr(worker.state, "nthreads", 1)
        except (ValueError, AttributeError):
            nthreads = 1
        job = {**job, "blas_threads": blas_threads(int(nthreads))}
    event = distributed.Event(stop_event)
    state = {"checked": 0.0, "stop": False}

    def should_stop() -> bool:
        # Asking the scheduler costs a round trip; once a second is quick enough to stop.
        now = time.monotonic()
        if not state["stop"] and now - state["checked"] >= 1.0:
            state["checked"] = now
            try:
                state["stop"] = bool(event.is_set())
            except Exception:  # the scheduler is gone, so is the sweep: stop
                state["stop"] = True
        return state["stop"]

    return run_trial(job, should_stop)


class DaskExecutor:
    """Trials as tasks on a Dask cluster at `address`, or on a LocalCluster started here."""

    name = "dask"

    def __init__(self, workers: int | None, address: str | None = None, cluster_kwargs: dict | None = None):
        distributed = import_distributed()
        self._distributed = distributed
        self.cluster = None
        self.address = address
        try:
            if address:
                self.client = distributed.Client(address, timeout="10s")
            else:
                # Each task only waits on its child process, so thread workers in this process do.
                kwargs = {"n_workers": 1, "threads_per_worker": workers or 1, "processes": False,
                          "dashboard_address": None, **(cluster_kwargs or {})}
                self.cluster = distributed.LocalCluster(**kwargs)
                self.client = distributed.Client(self.cluster)
        except (OSError, TimeoutError) as err:
            raise NnctlError(f"--address {address}: cannot reach the Dask scheduler ({err})") from None
        total = sum(self.client.nthreads().values()) or 1
        self.workers = workers or total
        self.slots = self.workers
        # On a LocalCluster we know the machine; remote workers work it out per task.
        self.threads = blas_threads(self.workers) if self.cluster is not None else None
        self._event_name = f"nnctl-sweep-stop-{uuid.uuid4().hex}"
        self._event = distributed.Event(self._event_name, client=self.client)

    def describe(self) -> str:
        where = self.address or "a local Dask cluster"
        return f"{self.workers} Dask task{'s' if self.workers != 1 else ''} at once on {where}"

    def submit(self, job: dict[str, Any]):
        key = f"nnctl-trial-{job['index']}-{uuid.uuid4().hex[:8]}"
        return self.client.submit(run_trial_task, job, self._event_name, key=key, pure=False)

    def stop(self) -> None:
        try:
            self._event.set()
        except Exception:
            pass

    def kill(self) -> None:
        self.stop()

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def make_executor(kind: str, workers: int | None, address: str | None = None):
    """"local" or "dask"; bad combinations are one-line NnctlErrors."""
    if kind not in ("local", "dask"):
        from nnctl.hparams import unknown_name_message
        raise NnctlError(f"--executor: {unknown_name_message('executor', kind, ['dask', 'local'])}")
    if workers is not None and workers < 1:
        raise NnctlError(f"--workers: must be >= 1, got {workers}")
    if kind == "local":
        if address:
            raise NnctlError("--address is for --executor dask")
        return LocalExecutor(workers or 1)
    return DaskExecutor(workers, address)
