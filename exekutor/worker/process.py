"""Running a worker as the main thing a process does (what `exekutor-gevent start` calls).

Order matters: gevent's monkeypatching and the cooperative psycopg2 wait callback come before anything else is
imported, then the application modules that register the jobs, then the worker. SIGTERM/SIGINT/SIGHUP (a closed
terminal) stop it gracefully, also during start-up (see stop_on_signals); a second signal kills it. The process
title shows the worker (id, identifier, queues, threads, state), and under systemd (`Type=notify`) the worker
reports READY=1 once it runs and STOPPING=1 when a signal stops it.
"""
import configparser
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import sysconfig
import traceback

# SIGHUP too: closing the terminal of a foreground worker stops it gracefully instead of killing it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopDuringStartUp(BaseException):
    """A second stop signal came before the worker existed (the application was being imported, say)."""


_EARLY_SIGNALS = []  # stop signals that came before run() handed them to the worker


def stop_on_signals():
    """Until run() hands the signals to the worker: a stop signal is noted, and run() stops the worker as soon
    as it starts (a handler that raised could be swallowed by an import's bare `except:`); a second one ends
    the start-up at once, as when an import hangs. (gevent's handlers, installed by run(), then take over.)"""
    def note(signum, frame):
        _EARLY_SIGNALS.append(signum)
        if len(_EARLY_SIGNALS) > 1:
            raise StopDuringStartUp(signal.Signals(signum).name)

    for signum in STOP_SIGNALS:
        signal.signal(signum, note)


def patch():
    """Monkeypatch the process for gevent; call before importing application code."""
    # A signal that raises (SIGINT's KeyboardInterrupt, a second one after stop_on_signals) waits until the
    # patching is done: one that interrupted it halfway left threading half patched, and the interpreter hung at
    # exit.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            with _plugins_looked_up_once():
                monkey.patch_all()
        from exekutor.db.green import patch_psycopg

        patch_psycopg()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@contextlib.contextmanager
def _plugins_looked_up_once():
    """gevent's patch_all calls its plugins' entry points at each of its ~25 events (gevent declares one itself);
    each lookup read the metadata of every installed distribution again (about 90 ms of a worker's start on a venv
    with a hundred packages), and importing importlib.metadata alone takes 12 ms. Where every distribution is in a
    directory of sys.path, their entry_points.txt files are read once, as importlib.metadata reads them; else each
    group is read once through it. Either way the plugins called are the same."""
    plugins = _gevent_plugins()
    if plugins is None:
        with _entry_points_read_once():
            yield
        return
    from gevent import events

    def notify_and_call_entry_points(event):
        events.notify(event)
        for value in plugins.get(event.ENTRY_POINT_NAME, ()):
            _load_entry_point(value)(event)

    original = events.notify_and_call_entry_points
    events.notify_and_call_entry_points = notify_and_call_entry_points
    try:
        yield
    finally:
        events.notify_and_call_entry_points = original


def _gevent_plugins():
    """{group: [entry point value]} of gevent's plugin groups, from the distributions in sys.path's directories
    (the first of a name wins, as in importlib.metadata); None where that cannot be told without importlib.metadata
    (a zip or an egg on sys.path, a finder with distributions of its own, a file it cannot parse)."""
    from importlib.machinery import PathFinder

    if any(hasattr(finder, "find_distributions") and finder is not PathFinder for finder in sys.meta_path):
        return None
    plugins, seen = {}, set()
    for entry in sys.path:
        path = entry or "."
        if not os.path.isdir(path) or path.endswith(".egg"):
            if os.path.exists(path):
                return None
            continue
        try:
            names = sorted(os.listdir(path))
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            distribution = name.rsplit(".", 1)[0].split("-")[0].lower().replace("_", "-").replace(".", "-")
            if distribution in seen:
                continue
            seen.add(distribution)
            try:
                _read_gevent_plugins(os.path.join(path, name, "entry_points.txt"), plugins)
            except (configparser.Error, UnicodeDecodeError):
                return None
    return plugins


def _read_gevent_plugins(entry_points_file, plugins):
    try:
        with open(entry_points_file, encoding="utf-8") as file:
            text = file.read()
    except OSError:  # none (most distributions), or an .egg-info that is a file
        return
    if "gevent.plugins" not in text:
        return
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(text)
    for group in parser.sections():
        if group.startswith("gevent.plugins"):
            plugins.setdefault(group, []).extend(value.strip() for value in parser[group].values())


def _load_entry_point(value):
    """What EntryPoint.load() gives for `module:attr.path [extras]`."""
    module, _, attrs = value.split("[")[0].strip().partition(":")
    target = importlib.import_module(module.strip())
    for attr in filter(None, attrs.strip().split(".")):
        target = getattr(target, attr)
    return target


@contextlib.contextmanager
def _entry_points_read_once():
    """Within the patching, each entry-point group is read once: the plugins found, and called, are the same."""
    from importlib import metadata

    original, found = metadata.entry_points, {}

    def entry_points(**selection):
        key = tuple(sorted(selection.items()))
        if key not in found:
            found[key] = original(**selection)
        return found[key]

    metadata.entry_points = entry_points
    try:
        yield
    finally:
        metadata.entry_points = original


def import_applications(modules):
    """Import the modules that define jobs (`--app`, config `imports`); `module:factory` calls the factory."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    loaded = []
    for spec in modules:
        name, _, factory = spec.partition(":")
        try:
            module = importlib.import_module(name)
            loaded.append(getattr(module, factory)() if factory else module)
        except Exception as error:  # noqa: BLE001 - whatever the application raises, it is this --app's failure
            raise ApplicationImportError(spec, error) from error
    return loaded


class ApplicationImportError(Exception):
    """An `--app` module (or its factory) that raised: names the module and where in the user's code it failed,
    and keeps the traceback with exekutor's and importlib's frames folded (the user's code is what to fix)."""

    def __init__(self, spec, error):
        self.spec, self.error = spec, error
        report = traceback.TracebackException.from_exception(error)
        self.user_frames = _fold_own_frames(report)
        frame = _innermost_application_frame(self.user_frames)
        where = f" ({frame.filename}, line {frame.lineno})" if frame else ""
        super().__init__(f"cannot import application module {spec}: {type(error).__name__}: {error}{where}")
        self.report = report

    def traceback(self):
        """The folded traceback, or None when it would say nothing more than the message (no such module, no
        such factory: no frame of the user's code, and no syntax error to point at)."""
        if not self.user_frames and not isinstance(self.error, SyntaxError):
            return None
        text = "".join(self.report.format())
        return text.replace("Traceback (most recent call last):",
                            "Traceback (most recent call last; exekutor's frames folded):")


def _innermost_application_frame(frames):
    """The last frame in the application's own files rather than in Python's or an installed library's (a
    KeyError of os.environ is the application's line that read it), else the last frame."""
    libraries = tuple(sysconfig.get_paths()[name] + os.sep for name in ("stdlib", "platstdlib", "purelib", "platlib"))
    mine = [frame for frame in frames if not frame.filename.startswith(("<", *libraries))]
    return (mine or frames or [None])[-1]


def _fold_own_frames(report):
    """Drop exekutor's and importlib's frames from `report` and the exceptions it chains; returns the user's
    frames of the exception raised last."""
    own = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep, "<frozen importlib",
           os.path.dirname(importlib.__file__) + os.sep)
    seen, chain = set(), [report]
    while chain:
        current = chain.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = traceback.StackSummary.from_list(
            [frame for frame in current.stack if not frame.filename.startswith(own)])
        chain += [linked for linked in (current.__cause__, current.__context__) if linked is not None]
    return list(report.stack)


def run(options, on_started=None):
    """Start a worker with `options`, block until it stops; returns the process exit status."""
    import gevent
    import psycopg2

    from exekutor.worker import Worker

    worker = Worker(**options)
    signals = {"count": 0}

    def on_signal():
        signals["count"] += 1
        if signals["count"] == 1:
            logging.getLogger("exekutor").info("exekutor worker %s: stopping%s", worker.id, _stopping_detail(worker))
            set_title(worker, "stopping")
            notify_systemd("STOPPING=1")
            gevent.spawn(worker.stop)
        else:
            set_title(worker, "killing")
            gevent.spawn(worker.kill)

    set_title(worker, "starting")
    for signum in STOP_SIGNALS:
        gevent.signal_handler(signum, on_signal)
    if _EARLY_SIGNALS:
        # Its stop runs at the start's first wait, so the start undoes itself (see Worker.stop).
        on_signal()
    try:
        worker.start()
    except psycopg2.OperationalError:
        raise  # the database is unreachable: nothing was registered, and nothing could be cleaned up there
    except BaseException:
        _kill_quietly(worker)
        raise
    if worker.stopped_or_killed():  # a signal came during start-up: the start undid itself
        return 0
    log_registered_jobs(worker)
    _warn_flask_without_app(worker)
    set_title(worker)
    if on_started is not None:
        on_started(worker)
    notify_systemd("READY=1")
    worker.join()
    return 0


# At most this many job names in the start-up log line (an application may register hundreds).
LOGGED_JOB_NAMES = 20


def log_registered_jobs(worker):
    """The jobs this worker can run, or a warning that it can run none: without --app (or config `imports`)
    every job it reserves fails as unknown, which nothing said before."""
    from exekutor.definitions import registry

    names = registry.names()
    log = logging.getLogger("exekutor")
    if not names:
        log.warning("exekutor worker %s: no job is registered, so every job it takes fails as unknown: give the "
                    "modules that define them with --app (or the config option imports)", worker.id)
        return
    more = f" and {len(names) - LOGGED_JOB_NAMES} more" if len(names) > LOGGED_JOB_NAMES else ""
    log.info("exekutor worker %s: %d job(s) registered: %s%s", worker.id, len(names),
             ", ".join(names[:LOGGED_JOB_NAMES]), more)


def _warn_flask_without_app(worker):
    """`--app pkg.jobs` of a Flask app imports Flask but never creates the app: each job that needs it then fails
    "Working outside of application context", with nothing pointing at the app factory."""
    if "flask" not in sys.modules:
        return
    integration = sys.modules.get("exekutor.contrib.flask")
    if integration is not None and integration.initialised():
        return
    logging.getLogger("exekutor").warning(
        "exekutor worker %s: Flask is imported but no Flask app was set up for exekutor (exekutor.contrib.flask."
        "Exekutor(app) did not run): jobs that use the app fail 'Working outside of application context'; give "
        "the app factory, e.g. --app myapp:create_app (see docs/flask.md)", worker.id)


def _stopping_detail(worker):
    """What a stop waits for: the first signal used to say "stopping", then nothing for up to
    wait_for_termination while jobs ran."""
    running, wait = worker.executor.busy(), worker.wait_for_termination
    if not running:
        return " (signal again to kill)"
    jobs = f"{running} running job{'s' if running > 1 else ''}"
    if wait is True:
        return f": waiting for {jobs} to finish, however long they take; signal again (Ctrl-C) to cancel them and exit"
    if not wait:  # None/False: the jobs finish on their own, then the worker exits
        return f": {jobs} will finish before it exits; signal again (Ctrl-C) to cancel them and exit"
    return (f": waiting up to {wait:g}s for {jobs} to finish, then cancelling them; signal again (Ctrl-C) to cancel "
            "them now and exit")


def _kill_quietly(worker):
    """After a failed start: whatever did start (row, greenlets) must not outlive it, and the error that
    made the start fail is the one to report."""
    try:
        worker.kill()
    except Exception as error:  # noqa: BLE001
        logging.getLogger("exekutor").warning("exekutor worker %s: cleanup after a failed start: %s", worker.id, error)


def set_title(worker, state=None):
    """`exekutor-gevent worker ID [IDENTIFIER] queues=... threads=MIN-MAX (state)` in ps and top.

    Built from the worker alone, never from argv, which may hold a database URL with its password.
    """
    from setproctitle import setproctitle

    parts = ["exekutor-gevent worker", worker.id]
    if worker.identifier:
        parts.append(f"[{worker.identifier}]")
    parts.append("queues=" + (",".join(worker.queues) if worker.queues else "*"))
    parts.append(f"threads={worker.executor.min_threads}-{worker.executor.max_threads}")
    if state:
        parts.append(f"({state})")
    setproctitle(" ".join(parts))


def notify_systemd(state):
    """sd_notify(3) without libsystemd, for `Type=notify` units: READY=1 once the worker runs, STOPPING=1."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as error:
        logging.getLogger("exekutor").warning("exekutor: could not notify systemd (%s): %s", address, error)
