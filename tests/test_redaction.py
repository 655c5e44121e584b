"""Passwords never shown, control characters never printed raw: every shape of URL, through every command.

Real libpq messages (psycopg2.connect on real URLs), real CLI processes, the real process title in /proc.
"""
import json
import re
import subprocess
import sys
import time
import unicodedata

import psycopg2
import psycopg2.extensions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ROOT, query, wait_for
from tests.test_cli import run_cli, title

PIECES = ("Zq7x", "Kp9w")  # the two halves of every password below: neither may ever be shown


def shapes(database_url):
    """(name, URL) pairs: the database URL written with passwords libpq and naive masking get wrong."""
    parts = psycopg2.extensions.parse_dsn(database_url)
    host, port, dbname = parts.get("host", "127.0.0.1"), parts.get("port", "5432"), parts["dbname"]
    if host.startswith("/"):
        host = "127.0.0.1"
    return [
        ("space in a URI", f"postgresql://root:Zq7x Kp9w@{host}:{port}/{dbname}"),
        ("slash in a URI", f"postgresql://root:Zq7x/Kp9w@{host}:{port}/{dbname}"),
        ("at sign in a URI", f"postgresql://root:Zq7x@Kp9w@{host}:{port}/{dbname}"),
        ("bad percent escape", f"postgresql://root:Zq7x%zzKp9w@{host}:{port}/{dbname}"),
        ("unclosed IPv6 bracket", f"postgresql://root:Zq7xKp9w@[::1/{dbname}"),
        ("keyword string, unquoted space", f"host={host} port={port} user=root password=Zq7x Kp9w dbname={dbname}"),
        ("keyword string, quoted", f"host={host} port={port} user=root password='Zq7x Kp9w' dbname={dbname}"),
        ("query string", f"postgresql://{host}:{port}/{dbname}?user=root&password=Zq7x-Kp9w"),
    ]


def leaks(text):
    return [piece for piece in PIECES if piece in text]


SHAPE_NAMES = [name for name, _ in shapes("postgresql://root@127.0.0.1:5432/x")]


@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_libpq_messages_about_any_url_shape_show_no_piece_of_its_password(shape):
    from exekutor import display

    url = dict(shapes("postgresql://root@127.0.0.1:1/x"))[shape]  # port 1: nothing listens, every shape fails
    display.remember(url)
    with pytest.raises(psycopg2.Error) as caught:
        psycopg2.connect(url, connect_timeout=3)
    assert leaks(display.redact(str(caught.value))) == []
    assert leaks(display.database_label(url)) == []


def test_every_url_in_a_message_is_masked_not_only_the_first():
    from exekutor import display

    message = "tried postgresql://a:Zq7x@h1/x, then postgres://b:Kp9w@h2/y and host=h3 password=Zq7x"
    assert leaks(display.redact(message)) == []
    assert display.redact(message).count("***") == 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_no_command_shows_a_piece_of_the_password(db, database_url, shape):
    url = dict(shapes(database_url))[shape]
    for command in (["info"], ["info", "--json"], ["migrate"], ["cleanup", "--yes"], ["cleanup"],
                    ["start", "--app", "tests.jobs_app"]):
        for how in ("flag", "env"):
            args = [*command, "--database-url", url] if how == "flag" else command
            env = {"EXEKUTOR_DATABASE_URL": url, "EXEKUTOR_CONNECT_TIMEOUT": "3"}
            if command[0] == "start":
                env["EXEKUTOR_STATEMENT_TIMEOUT"] = "3"
            try:
                result = run_cli(*args, env=env, timeout=20)
            except subprocess.TimeoutExpired:  # a worker that could start: it ran, which is not this test's point
                continue
            assert leaks(result.stdout + result.stderr) == [], (shape, command, how, result.stdout, result.stderr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("url_template", [
    "postgresql://root:Zq7x Kp9w@127.0.0.1:{port}/db",
    "host=127.0.0.1 port={port} user=root password='Zq7x Kp9w' dbname=db",
])
@pytest.mark.parametrize("command", [["migrate"], ["info"], ["start", "--app", "tests.jobs_app"]])
def test_the_process_title_shows_no_piece_of_the_password(silent_server, url_template, command):
    url = url_template.format(port=silent_server)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT, "EXEKUTOR_CONNECT_TIMEOUT": "10"}
    proc = subprocess.Popen([sys.executable, "-m", "exekutor", *command, "--database-url", url], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Waiting for the silent server: its title is what ps shows meanwhile.
        wait_for(lambda: proc.poll() is not None or "exekutor" in title(proc.pid), 60,
                 message="the CLI to start")
        time.sleep(1.0)
        assert proc.poll() is None, proc.communicate()
        assert leaks(title(proc.pid)) == [], title(proc.pid)
    finally:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    assert leaks(out.decode() + err.decode()) == []


# --- control characters ---------------------------------------------------------------------------------------

HOSTILE = "evil\x1b[2J\x1b[31m\nFORGED ROW\r\u202e\x07"


def test_printable_escapes_every_control_character_and_keeps_other_text():
    from exekutor import display

    assert display.printable("plain — café 日本") == "plain — café 日本"
    shown = display.printable(HOSTILE)
    assert not any(ch in shown for ch in "\x1b\n\r\x07\u202e")
    assert "\\x1b[2J" in shown and "FORGED ROW" in shown


# Bidirectional marks, embeddings, overrides and isolates, Arabic letter mark, zero-width characters, word joiner,
# invisible operators, BOM, soft hyphen, a tag character, a lone surrogate, NEL, line and paragraph separators.
INVISIBLE = ("\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u200c\u200d"
             "\u2060\u2062\ufeff\u00ad\U000e0041\ud800\x85\u2028\u2029")


def hidden(char):
    """What printable must escape: a control, a format character, a separator of lines, a surrogate."""
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs")


def test_printable_escapes_bidi_controls_and_zero_width_characters_visibly():
    from exekutor import display

    assert display.printable("gnp\u202e.exe") == "gnp\\u202e.exe"
    shown = display.printable(INVISIBLE)
    assert shown.isascii() and shown == INVISIBLE.encode("unicode_escape", "backslashreplace").decode()
    assert display.printable("a\tb\nc\u202ed", multiline=True) == "a\tb\nc\\u202ed"


# A backslash is left out: the text's own "\\u202e" would read as an escape below.
@given(st.text(alphabet=st.one_of(st.characters(exclude_characters="\\"), st.sampled_from(INVISIBLE + "\n\t\r\x1b")),
               max_size=40), st.booleans())
def test_printable_leaves_no_hidden_character_and_keeps_every_other_one(text, multiline):
    from exekutor import display

    shown = display.printable(text, multiline)
    kept = "\n\t" if multiline else ""
    assert not [char for char in shown if hidden(char) and char not in kept]
    # Nothing else changes: the visible characters, in order, are the text's own, and each escape decodes back.
    visible = [char for char in text if not hidden(char) or char in kept]
    pieces = re.split(r"(\\(?:[tnr]|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}))", shown)
    assert "".join(pieces[0::2]) == "".join(visible)
    assert [piece.encode().decode("unicode_escape") for piece in pieces[1::2]] == \
        [char for char in text if hidden(char) and char not in kept]


@pytest.mark.timeout(60)
def test_jobs_show_escapes_every_field_and_keeps_traceback_lines(db):
    payload = {"job": "tests.noop", "args": ["gnp\u202e.exe"], "kwargs": {"k\u200b": "v\u2066"}}
    job_id = query(db, "INSERT INTO exekutor_jobs (payload, options, status, attempts, finished_at) "
                       "VALUES (%s, %s, 'f', 1, now()) RETURNING id",
                   (json.dumps(payload), json.dumps({"tag": "x\u200fy"})))[0][0]
    query(db, "INSERT INTO exekutor_job_errors (job_id, attempt, error) VALUES (%s, 1, %s)",
          (job_id, json.dumps({"type": "a\u061cError", "message": "m\ufeff",
                               "traceback": "Traceback:\n\tFile x\u200d\u2028FORGED\nError"})))
    result = run_cli("jobs", "show", str(job_id))
    assert result.returncode == 0, result.stderr
    assert not [char for char in result.stdout if hidden(char) and char not in "\n\t"], result.stdout
    for escape in ("\\u202e", "\\u200b", "\\u2066", "\\u200f", "\\u061c", "\\ufeff", "\\u200d", "\\u2028"):
        assert escape in result.stdout, escape
    assert "      Traceback:\n      \tFile x" in result.stdout
    assert not any(line.startswith("FORGED") for line in result.stdout.splitlines())


@pytest.mark.timeout(60)
def test_info_escapes_queue_names_hostnames_and_identifiers(db):
    query(db, "INSERT INTO exekutor_workers (hostname, pid, identifier, status, queues) "
              "VALUES (%s, 1, %s, 'r', ARRAY[%s])", (HOSTILE, HOSTILE, HOSTILE))
    query(db, "INSERT INTO exekutor_jobs (queue, payload) VALUES (%s, '{\"job\": \"tests.noop\"}')", (HOSTILE[:60],))
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\r" not in result.stdout and "\u202e" not in result.stdout
    assert not any(line.startswith("FORGED") for line in result.stdout.splitlines())
    data = json.loads(run_cli("info", "--json").stdout)  # JSON escapes on its own; the raw values stay raw there
    assert any(worker["hostname"] == HOSTILE for worker in data["workers"])


@pytest.mark.timeout(60)
def test_the_worker_log_escapes_a_payloads_job_name(start_worker, db):
    worker = start_worker("--threads", "2", "--poll-interval", "1")
    query(db, "INSERT INTO exekutor_jobs (payload) VALUES (%s)", (json.dumps({"job": HOSTILE}),))
    wait_for(lambda: query(db, "SELECT status FROM exekutor_jobs")[0][0] == "f", 30, message="the job to fail")
    wait_for(lambda: "FORGED" in worker.output(), 10, message="the log line")
    output = worker.output()
    assert "\x1b" not in output
    assert not any(line.startswith("FORGED") for line in output.splitlines()), output
