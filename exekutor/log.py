"""What the worker logs about jobs, in one place (standard `logging`, logger "exekutor").

- a job starting and a job completing: one DEBUG line each;
- a job failing: one ERROR line with the error and its traceback;
- a job retried, discarded (including timeouts) or released after losing its connection: one WARNING line with
  the error and its traceback;
- a job that swallowed its execution_timeout's interruption: one more WARNING line saying so;
- with the `log_job_outcomes` option (off by default, so that a busy worker's log stays quiet): one INFO line per
  finished job, whatever its outcome, with its name, id, queue, outcome and runtime (it replaces the DEBUG line).

Job arguments are never logged, at any level. Error messages exekutor itself builds from argument values (a
`SerializationError` while loading them) are left out of the log line, traceback included; the full record is
in `exekutor_job_errors`. What a job's own exception says is the job's business.

`quiet` (a worker option) lowers the logger to errors only. The `logger` option (a logger or its name) sends
exekutor's records to another logger instead of up the "exekutor" hierarchy.
"""
import logging

from exekutor import config
from exekutor.display import printable, redact
from exekutor.error_records import error_record
from exekutor.errors import SerializationError
from exekutor.execution import FAILED

logger = logging.getLogger("exekutor")

_OUTCOME_WORDS = {"f": "failed", "d": "was discarded", "retry": "failed and will be retried",
                  "release": "lost its database connection and was released"}
# Errors whose message quotes job arguments (by the type name stored in the outcome's error record).
_QUOTES_ARGUMENTS = {error_record(SerializationError())["type"]}
# The outcome in the INFO line of log_job_outcomes: one word each, easy to grep and to count.
_OUTCOME_NAMES = {"c": "completed", "f": "failed", "d": "discarded", "retry": "retrying", "release": "released"}


def job_name(info):
    """The job's name from its payload (anyone who can write the table writes it): control characters escaped."""
    payload = info.get("payload")
    name = payload.get("job") if isinstance(payload, dict) else None
    return printable(name) if isinstance(name, str) else "?"


def job_started(info):
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("exekutor job %s (%s) started on queue %s, attempt %s", info["id"], job_name(info),
                     info.get("queue"), info.get("attempts"))


def job_outcome(outcome, info):
    """The INFO line of `log_job_outcomes`: name, id, queue, outcome, runtime; never arguments nor error messages
    (an error's message may quote arguments; the WARNING or ERROR line about it stays as it was)."""
    logger.info("exekutor job %s (%s) on queue %s %s in %.3fs", info["id"], job_name(info),
                printable(info.get("queue")), _OUTCOME_NAMES.get(outcome.status, outcome.status),
                outcome.runtime or 0.0)


def job_finished(outcome, info):
    error = outcome.error
    with_outcomes = config.get("log_job_outcomes")
    if with_outcomes:
        job_outcome(outcome, info)
    if error is None:
        # Else the INFO line said it. The level is checked first: the job's name is escaped only for a line shown.
        if not with_outcomes and logger.isEnabledFor(logging.DEBUG):
            logger.debug("exekutor job %s (%s) completed in %.3fs", info["id"], job_name(info),
                         outcome.runtime or 0.0)
        return
    level = logging.ERROR if outcome.status == FAILED else logging.WARNING
    words = _OUTCOME_WORDS.get(outcome.status, outcome.status)
    if error["type"] in _QUOTES_ARGUMENTS:
        logger.log(level, "exekutor job %s (%s) %s: %s: its arguments could not be loaded (the details quote "
                   "them, so they are only in exekutor_job_errors)", info["id"], job_name(info), words, error["type"])
        return
    logger.log(level, "exekutor job %s (%s) %s: %s: %s\n%s", info["id"], job_name(info), words, error["type"],
               error["message"], error["traceback"].rstrip("\n"))


def job_swallowed_timeout(info, limit):
    logger.warning("exekutor job %s (%s) swallowed the interruption of its execution_timeout of %gs (a bare "
                   "`except:` or `except BaseException:` caught gevent.Timeout); it ends as timed out",
                   info["id"], job_name(info), limit)


def apply_quiet(quiet):
    """`quiet`: only errors from exekutor's logger (a level set explicitly higher stays)."""
    if quiet and logger.getEffectiveLevel() < logging.ERROR:
        logger.setLevel(logging.ERROR)


class _Forward(logging.Handler):
    """Hands exekutor's records to the logger the `logger` option names."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def emit(self, record):
        self.target.handle(record)


class _Redact(logging.Filter):
    """Every record of exekutor's logger, message and traceback, without the passwords it may quote: errors from
    libpq can quote a whole connection URL."""

    def filter(self, record):
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


logger.addFilter(_Redact())


def use_logger(target):
    """Route the "exekutor" logger's records to `target` (a logging.Logger or a logger name)."""
    target = logging.getLogger(target) if isinstance(target, str) else target
    for handler in [h for h in logger.handlers if isinstance(h, _Forward)]:
        logger.removeHandler(handler)
    if target is logger:
        logger.propagate = True
        return
    logger.addHandler(_Forward(target))
    logger.propagate = False
