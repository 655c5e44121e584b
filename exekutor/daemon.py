"""Pidfiles, daemonizing and stopping workers by pidfile (`start --daemonize`, `stop`, `restart`).

A worker holds an exclusive `flock` on its pidfile for as long as it lives. The lock, not the pid written in the
file, is what says a worker is alive: the kernel drops it however the process ends (`kill -9` included, and
before a zombie is reaped), so a stale pidfile is always recognised and a reused pid can never make one look
alive. Taking the lock is also what makes "refuse to start over a live pidfile" free of races.

Pidfiles and log files are opened without following a symbolic link (O_NOFOLLOW) and used only when they are
regular files owned by the current user, so nobody can make a worker truncate or append to a file of their
choosing. `stop` signals the pid written in a pidfile only while that very process holds the pidfile's lock
(checked in /proc on Linux, then signalled through a pidfd), never a process that merely reuses the pid.
"""
import errno
import fcntl
import json
import os
import re
import select
import signal
import stat
import sys
import time

DEFAULT_PIDFILE = "tmp/pids/exekutor.%{identifier}.pid"
DEFAULT_LOGFILE = "log/exekutor.%{identifier}.log"
# Without an identifier the placeholder disappears together with the separator before it:
# tmp/pids/exekutor.%{identifier}.pid -> tmp/pids/exekutor.pid
_PLACEHOLDER = re.compile(r"[._-]?%\{identifier\}")
START_TIMEOUT = 60.0  # how long `start --daemonize` waits for the daemon to report that its worker runs
KILL_GRACE = 10.0  # after the second SIGTERM (the worker cancels and releases its jobs), before SIGKILL
_POLL = 0.05


class AlreadyRunning(Exception):
    def __init__(self, path, pid):
        super().__init__(f"a worker is already running (pid {pid or 'unknown'}, pidfile {path})")
        self.path, self.pid = path, pid


class UnsafeFile(OSError):
    """A pidfile or log file that is a symbolic link, not a regular file, or not owned by us: left alone."""

    def __init__(self, path, problem):
        super().__init__(errno.EPERM, f"{problem}; refusing to use it", path)

    def __str__(self):
        return f"{self.filename}: {self.strerror}"


def open_file(path, flags, mode, what="pidfile"):
    """os.open() of a pidfile or log file that is, or becomes, a regular file of ours; never through a symlink.

    Raises UnsafeFile for a symbolic link (the last path component), a file that is not regular (a FIFO, a
    device) or a file owned by another user.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)  # O_NONBLOCK: FIFOs
    except OSError as error:
        if error.errno == errno.ELOOP and os.path.islink(path):
            raise UnsafeFile(path, f"the {what} is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(path, f"the {what} is not a regular file")
        if info.st_uid != os.geteuid():
            raise UnsafeFile(path, f"the {what} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_log(path):
    """The log file, opened for appending; created 0600 (less by the umask): errors may quote what jobs did."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return open_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600, "log file")


def expand(pattern, identifier):
    """A pidfile or log file path with `%{identifier}` filled in."""
    if identifier and ("/" in identifier or "\0" in identifier):
        raise ValueError(f"identifier {identifier!r} cannot be part of a file name ('{pattern}')")
    if identifier:
        return pattern.replace("%{identifier}", identifier)
    return _PLACEHOLDER.sub("", pattern)


def glob_pattern(pattern):
    """The glob matching the pidfiles of `pattern` for every identifier (and for none)."""
    return _PLACEHOLDER.sub("*", pattern)


def _read_pid(fd):
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _same_file(fd, path):
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))  # lstat: a symlink put in its place is not it
    except FileNotFoundError:
        return False


def _locked_by_other(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


class Pidfile:
    def __init__(self, path):
        self.path = path
        self.stale_pid = None  # the pid a dead worker left behind, when acquire() cleaned up after it
        self._fd = None

    def acquire(self):
        """Lock the pidfile for this process (and the children it forks); AlreadyRunning if a live worker has it."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        while True:
            fd = open_file(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise AlreadyRunning(self.path, pid) from None
            # The previous owner may have unlinked the file between our open and our lock: then we hold the lock
            # of a file nobody can see, so start over with the path's current file.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self.stale_pid = _read_pid(fd)
        os.ftruncate(fd, 0)
        self._fd = fd
        return self

    def write_pid(self):
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def close(self):
        """Let go of this process's descriptor only (a daemon forked from us keeps the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self):
        """Remove the pidfile when the worker is done. The lock stays until the process exits, so that `stop`
        (which watches the lock) reports a worker stopped only once its process is gone."""
        if self._fd is not None and _same_file(self._fd, self.path):
            os.unlink(self.path)


def probe(path):
    """('running', pid), ('stale', pid) or ('missing', None) for the pidfile at `path`."""
    try:
        fd = open_file(path, os.O_RDONLY, 0)
    except FileNotFoundError:
        return "missing", None
    try:
        return ("running" if _locked_by_other(fd) else "stale"), _read_pid(fd)
    finally:
        os.close(fd)


def remove_stale(path):
    """Delete the pidfile unless a live worker holds it; True if it was removed."""
    if not os.path.lexists(path):
        return False  # (acquire() would create it)
    try:
        pidfile = Pidfile(path).acquire()
    except (AlreadyRunning, FileNotFoundError):
        return False
    pidfile.release()
    pidfile.close()
    return True


# ---------------------------------------------------------------------------------------------------------------
# Daemonizing


class Daemon:
    """The classic double fork, with a pipe back to the original process.

    The original process waits on the pipe until the daemon says its worker runs (or why it could not start) and
    exits with that status, so `start --daemonize` fails visibly instead of leaving a dead daemon behind.
    """

    def __init__(self, log_fd):
        self._log_fd = log_fd
        self._pipe = None

    def fork(self):
        """True in the daemon; False in the original process."""
        read_end, write_end = os.pipe()
        sys.stdout.flush()  # or what is buffered would be written twice, by both processes
        sys.stderr.flush()
        child = os.fork()
        if child:
            os.close(write_end)
            os.waitpid(child, 0)  # the intermediate child exits at once
            self._pipe = read_end
            return False
        try:
            os.close(read_end)
            os.setsid()  # a session of its own: no controlling terminal, no SIGHUP when the shell goes away
            if os.fork():
                os._exit(0)  # not a session leader, so the daemon can never acquire a terminal again
        except BaseException:
            os._exit(1)  # the intermediate child must never go on to run the original process's code
        self._pipe = write_end
        self._redirect_output()
        return True

    def _redirect_output(self):
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(self._log_fd, 1)
        os.dup2(self._log_fd, 2)
        os.close(self._log_fd)

    # --- in the daemon -------------------------------------------------------------------------------------------

    def report(self, status, message):
        """Tell the original process how the start went (once); it exits with `status`."""
        if self._pipe is None:
            return
        line = json.dumps({"status": status, "message": message}) + "\n"
        try:
            os.write(self._pipe, line.encode())
        except OSError:
            pass  # the original process is gone (killed while waiting): nobody to tell
        os.close(self._pipe)
        self._pipe = None

    # --- in the original process ---------------------------------------------------------------------------------

    def wait(self, timeout=START_TIMEOUT):
        """(exit status, message) as reported by the daemon."""
        data, deadline = b"", time.monotonic() + timeout
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._pipe], [], [], remaining)[0]:
                return 1, f"the daemon did not report a running worker within {timeout:g}s"
            chunk = os.read(self._pipe, 4096)
            if not chunk:
                return 1, "the daemon exited while starting"
            data += chunk
        os.close(self._pipe)
        report = json.loads(data)
        return report["status"], report["message"]


# ---------------------------------------------------------------------------------------------------------------
# Stopping


def _holds_lock(pid, file_stat):
    """Whether process `pid` holds an flock on the file of `file_stat` (its device and inode).

    /proc/PID/fdinfo/FD shows a "lock:" line exactly when that descriptor's open file holds the lock, so this is
    the lock holder itself, not a process that merely has the file open or reuses a dead worker's pid. None
    where there is no such /proc (then only the lock and the pid in the file are known).
    """
    if not os.path.isdir("/proc/self/fdinfo"):
        return None
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError):
        return False
    for name in descriptors:
        try:
            target = os.stat(f"/proc/{pid}/fd/{name}")
            if (target.st_dev, target.st_ino) != (file_stat.st_dev, file_stat.st_ino):
                continue
            with open(f"/proc/{pid}/fdinfo/{name}", encoding="ascii", errors="replace") as fdinfo:
                if any(line.startswith("lock:") and " FLOCK " in line for line in fdinfo):
                    return True
        except (FileNotFoundError, ProcessLookupError):
            continue  # closed (or the process exited) meanwhile
    return False


def _pidfd(pid):
    """A pidfd of `pid` (None where the system has none): signals through it can only reach that process."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError) as error:
        if isinstance(error, ProcessLookupError):
            raise
        return None


class Target:
    def __init__(self, path, pid):
        self.path, self.pid = path, pid
        self.signals = []  # what it took, for the report
        # The file as it is now: the worker unlinks it when done but keeps the lock until its process exits.
        self._fd = open_file(path, os.O_RDONLY, 0)
        self._stat = os.fstat(self._fd)
        try:
            self._pidfd = _pidfd(pid)
        except ProcessLookupError:
            self._pidfd, self._gone = None, True
        else:
            self._gone = False

    def alive(self):
        """Whether anyone still holds the pidfile's lock (the worker, or a process it left behind)."""
        return _locked_by_other(self._fd)

    def holds_lock(self):
        """Whether the process of the pid in the pidfile is the one that holds its lock, now."""
        if self._gone:
            return False
        held = _holds_lock(self.pid, self._stat)
        if held is None:  # no /proc: trust the pid while the lock is held
            held = self.alive()
        if held and self._pidfd is not None:
            # The pidfd pins the process we opened it for: if it still exists, /proc/PID above was that process
            # (a pid is reused only once its process is gone), and every signal goes through the pidfd.
            try:
                signal.pidfd_send_signal(self._pidfd, 0)
            except ProcessLookupError:
                held = False
        self._gone = not held  # once gone, never signalled again, whatever gets that pid next
        return held

    def close(self):
        os.close(self._fd)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def send(self, signum):
        """Signal the worker if it still holds its pidfile's lock; False if it does not (nothing is sent)."""
        if not self.holds_lock():
            return False
        self.signals.append(signal.Signals(signum).name)
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass  # it exited in the meantime
        return True


def _wait_gone(targets, timeout):
    """The targets still alive after `timeout` seconds (None: wait forever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        alive = [target for target in targets if target.alive()]
        if not alive or (deadline is not None and time.monotonic() >= deadline):
            return alive
        time.sleep(_POLL)


def _not_the_holder(target, echo):
    echo(f"{target.path}: pid {target.pid} does not hold the pidfile's lock (it exited, and another process still "
         f"holds the lock); not signalling anything", err=True)


def _targets(paths, echo, missing_ok=False):
    """The running workers of these pidfiles; stale pidfiles are removed on the way."""
    targets, failures = [], 0
    for path in paths:
        try:
            state, pid = probe(path)
            target = Target(path, pid) if state == "running" and pid else None
        except UnsafeFile as error:
            failures += 1
            echo(str(error), err=True)
            continue
        except FileNotFoundError:
            echo(f"{path}: worker pid {pid} stopped by itself")
            continue
        if target is not None:
            if target.holds_lock():
                targets.append(target)
                continue
            locked = target.alive()
            target.close()
            if locked:
                failures += 1
                _not_the_holder(target, echo)
            else:
                echo(f"{path}: worker pid {pid} stopped by itself")
        elif state == "running":
            failures += 1
            echo(f"{path}: the worker is still starting (no pid written yet); try again", err=True)
        elif state == "stale":
            remove_stale(path)
            echo(f"{path}: the worker (pid {pid}) was not running; removed the stale pidfile")
        elif missing_ok:
            echo(f"{os.path.abspath(path)}: no worker running (no pidfile there)")
        else:
            # A miss is not a success: the worker may run with its pidfile somewhere else (another directory).
            failures += 1
            echo(f"{os.path.abspath(path)}: no worker running (no pidfile there)", err=True)
    return targets, failures


def stop(paths, timeout, echo, missing_ok=False):
    """Stop the workers of these pidfiles, all at once; returns how many could not be stopped (a pidfile that does
    not exist counts, unless `missing_ok`: a restart starts a worker whether one ran or not).

    SIGTERM lets a worker finish its jobs (within its wait_for_termination). A worker still running `timeout`
    seconds later (None: never) gets a second SIGTERM, on which it cancels its jobs and puts them back to
    pending; one still running KILL_GRACE seconds after that gets SIGKILL (its jobs are then rescued by the
    other workers after worker_timeout). Only the process that holds a pidfile's lock is ever signalled: when
    the pid in the file has exited while another process still holds the lock, nothing is sent and that
    pidfile counts as a failure.
    """
    targets, failures = _targets(paths, echo, missing_ok)
    orphaned = []
    for target in targets:
        target.send(signal.SIGTERM)
    running = targets
    for wait, signum, why in ((timeout, signal.SIGTERM, "to cancel its jobs"), (KILL_GRACE, signal.SIGKILL, "")):
        running = _wait_gone(running, wait)
        for target in running:
            if target.holds_lock():
                echo(f"{target.path}: pid {target.pid} still running after {wait:g}s; sending {signum.name} "
                     f"{why}".rstrip())
                target.send(signum)
            elif target.alive():  # the worker is gone, but something it left behind holds the lock
                orphaned.append(target)
        running = [target for target in running if target not in orphaned]
    running = _wait_gone(running, KILL_GRACE)
    for target in targets:
        target.close()
        if target in orphaned:
            _not_the_holder(target, echo)
            continue
        if target in running:
            echo(f"{target.path}: pid {target.pid} could not be stopped", err=True)
            continue
        remove_stale(target.path)  # a killed worker could not remove its pidfile itself
        echo(f"{target.path}: worker pid {target.pid} {_OUTCOMES[len(target.signals)]}")
    return failures + len(running) + len(orphaned)


_OUTCOMES = {0: "stopped by itself", 1: "stopped", 2: "stopped (its unfinished jobs went back to pending)",
             3: "killed (its unfinished jobs run again after worker_timeout)"}
