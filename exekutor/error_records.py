"""Error records: what is stored in exekutor_job_errors for a failed attempt, made storable whatever the error.

A job's exception is the job's business: its message can hold a NUL, a lone surrogate (a file name decoded with
`surrogateescape`), text the database's encoding lacks, a megabyte of data, or its `__str__` can raise. None of
that may stop the outcome from being written (one unwritable record used to stall a worker for good), so:

- text is made storable: NUL and lone surrogates become their Python escapes (`\\x00`, `\\udcff`);
- the message is cut to MAX_MESSAGE_CHARS (its start is kept) and the traceback to MAX_TRACEBACK_CHARS (a tenth
  from its start, the rest from its end, where the error was raised), each with a note saying how much was cut;
- an exception whose `__str__` raises is recorded with a placeholder message, under its own type;
- `fit_record` re-encodes a record for a database whose encoding is not UTF-8 (characters it lacks become escapes);
- `minimal_record` is what is written when even a fitted record is refused: the type and why.
"""
import traceback

MAX_MESSAGE_CHARS = 10_000
MAX_TRACEBACK_CHARS = 100_000
MAX_TYPE_CHARS = 500


def type_name(kind):
    module = getattr(kind, "__module__", None)
    name = getattr(kind, "__qualname__", None) or getattr(kind, "__name__", "?")
    return name if module in (None, "builtins") else f"{module}.{name}"


def error_record(error):
    """The record of a failed attempt: {"type", "message", "traceback"}, storable whatever `error` is."""
    kind = type(error)
    return {
        "type": cut_head(storable(str(type_name(kind))), MAX_TYPE_CHARS),
        "message": cut_head(storable(safe_message(error)), MAX_MESSAGE_CHARS),
        "traceback": cut_middle(storable(_safe_traceback(error)), MAX_TRACEBACK_CHARS),
    }


def safe_message(error):
    try:
        message = str(error)
    except BaseException as failure:  # noqa: BLE001 - the job's own exception decides, not its __str__
        return f"<exception str() failed: {type(failure).__name__}>"
    return message if isinstance(message, str) else "<exception str() did not return a string>"


def _safe_traceback(error):
    try:
        return "".join(traceback.format_exception(type(error), error, error.__traceback__))
    except BaseException as failure:  # noqa: BLE001
        return f"<traceback could not be formatted: {type(failure).__name__}>"


def storable(text):
    """`text` without what no PostgreSQL text can hold: NUL and lone surrogates become backslash escapes."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def cut_head(text, limit):
    """The first `limit` characters of text, and a note of what was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters cut]"


def cut_middle(text, limit):
    """`limit` characters of text: a tenth from its start, the rest from its end (where a traceback says what was
    raised), and a note of what was cut between them."""
    if len(text) <= limit:
        return text
    head = limit // 10
    return f"{text[:head]}... [{len(text) - limit} characters cut] ...{text[len(text) - (limit - head):]}"


def codec_for(server_encoding):
    """The Python codec of a PostgreSQL server encoding (psycopg2's table; ASCII for one Python lacks), or None for
    UTF-8, where every storable text fits."""
    from psycopg2.extensions import encodings

    codec = encodings.get((server_encoding or "UTF8").upper(), "ascii")
    return None if codec == "utf_8" else codec


def fit_record(record, codec):
    """The record with every text encodable in `codec` (None: unchanged); what does not fit becomes escapes."""
    if codec is None:
        return record
    return {key: _fit(value, codec) if isinstance(value, str) else value for key, value in record.items()}


def _fit(text, codec):
    try:
        text.encode(codec)
        return text
    except UnicodeEncodeError:
        return text.encode(codec, "backslashreplace").decode(codec)


def minimal_record(record, reason):
    """The smallest record that still says what failed: its type (ASCII) and why the full record was not stored."""
    kind = record.get("type") if isinstance(record, dict) else None
    kind = str(kind) if kind else "unknown"
    return {"type": cut_head(_ascii(kind), MAX_TYPE_CHARS),
            "message": _ascii(f"the full error record could not be stored: {reason}")[:MAX_MESSAGE_CHARS],
            "traceback": ""}


def _ascii(text):
    return storable(text).encode("ascii", "backslashreplace").decode("ascii")
