"""Every process bench/compare starts, and the one place that ends them.

Processes are registered by pid when started and SIGKILLed at exit: normal exit (atexit), an
exception, Ctrl-C, SIGTERM or SIGHUP. Long-lived servers (mariadbd) also get PR_SET_PDEATHSIG,
so they die with bench/compare even if it is itself SIGKILLed. Cleanup hooks (the QuorumSQL
cluster's stop, removing the scratch dir) run after the processes are gone.
"""

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import time

_procs = []  # Popen objects we started and have not reaped yet
_hooks = []  # callables run once at cleanup, last registered first
_cleaned = False
PR_SET_PDEATHSIG = 1


def log(msg):
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent():
    # Runs in the child between fork and exec: one syscall, nothing that allocates.
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def spawn(argv, stdout_path, die_with_parent=True):
    """Start a long-lived process (output to stdout_path), registered for cleanup."""
    out = open(stdout_path, "ab")
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True,
                             preexec_fn=_die_with_parent if die_with_parent else None)
    finally:
        out.close()
    _procs.append(p)
    return p


def run(argv, timeout):
    """Run a short-lived process to completion; returns (returncode, stdout, stderr), returncode
    None on timeout (the process is killed). Registered while it runs."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _procs.append(p)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return None, out, err
    finally:
        forget(p)


def forget(p):
    try:
        _procs.remove(p)
    except ValueError:
        pass


def kill(p, sig=signal.SIGKILL, timeout=10):
    """Signal one registered process by pid and reap it."""
    if p.poll() is None:
        try:
            os.kill(p.pid, sig)
        except OSError:
            pass
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if sig != signal.SIGKILL:
            log("pid %d did not exit within %d s of signal %d: SIGKILL" % (p.pid, timeout, sig))
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    forget(p)


def add_hook(fn):
    _hooks.append(fn)


def cleanup():
    global _cleaned
    if _cleaned:
        return
    _cleaned = True
    for p in list(_procs):
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except OSError:
                pass
    for p in list(_procs):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log("pid %d did not die after SIGKILL" % p.pid)
    _procs.clear()
    for fn in reversed(_hooks):
        try:
            fn()
        except Exception as e:  # cleanup must go on with the next hook
            log("cleanup hook failed: %s" % e)


def _on_signal(signum, _frame):
    log("signal %d: stopping everything bench/compare started" % signum)
    cleanup()
    os._exit(128 + signum)


def install_signals():
    """(Re)install our handlers; call again after anything that installs its own (qscluster)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def install():
    atexit.register(cleanup)
    install_signals()
