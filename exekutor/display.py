"""Text shown to people (logs, error messages, `info`, process titles, health answers): no password, no control
characters.

Passwords. A database is *named* by `database_label`, built from the parts of its parsed URL (user, host, port,
database), never from the URL's text: a password with a space, an unescaped `/` or `@` or a bad `%xx` cannot leak
through a label. Messages, which may quote a URL or a password (libpq quotes whole URLs in some errors, parts of a
keyword string in others), go through `redact`, which removes

- every password of a database URL exekutor was given (`remember`, called wherever a URL enters: configuration,
  environment, `--database-url`), raw and percent-encoded, and for a URL too broken to parse, every fragment of
  what could be its password;
- every `user:password@` of any URL in the text (all of them, not only the first), `?password=…` and
  `password=…` of keyword strings, quoted or not.

Control characters. Queue names, hostnames, identifiers and job names come from rows anyone with access to the
tables may write, and so do error messages, tracebacks, arguments and schedule names: `printable` escapes control
characters (ANSI escapes, newlines, DEL, C1, line separators) and invisible format characters (bidirectional
overrides, zero-width characters) so that they can neither restyle a terminal, forge a line nor reorder what a
reader sees. The CLI and the dashboard both use it.
"""
import os
import re
import threading
import unicodedata
import urllib.parse

MASK = "***"
_MIN_FRAGMENT = 4  # shorter pieces of a broken URL's password are too common to mask everywhere
_ENV_URLS = ("EXEKUTOR_DATABASE_URL", "DATABASE_URL")

_lock = threading.Lock()
_remembered = {}  # url -> (strings that give its password away, the pieces of its password)
_SEPARATORS = r"[\s/@:%?&=',]+"


# --- passwords ----------------------------------------------------------------------------------------------------

def remember(url):
    """Note a database URL exekutor was given: its password is removed from every message from now on."""
    if isinstance(url, str) and url and url not in _remembered:
        found = _secrets_of(url)
        with _lock:
            _remembered[url] = found


def database_label(url):
    """`user@host:port/database` from the parsed URL; never any of its text beyond those parts."""
    parts = _parse(url)
    if parts is None:
        return "a database URL that cannot be parsed"
    # A broken URL parses into parts that hold pieces of its password ("p@ss@host": host "ss@host"): those go.
    pieces = _secrets_of(url)[1]
    user, host, port, dbname = (_unless_secret(parts.get(key), pieces) for key in ("user", "host", "port", "dbname"))
    place = printable(host or "local socket") + (f":{printable(port)}" if port else "")
    return (f"{printable(user)}@" if user else "") + place + (f"/{printable(dbname)}" if dbname else "")


def _unless_secret(part, pieces):
    if part and pieces & set(re.split(_SEPARATORS, part)):
        return MASK
    return part


# A URL's user:password@ (libpq ends the user info at the first '@' or '/'), a query string's password=, libpq's
# keyword password=value (quoted or not), a 'password': 'value' item (the repr of a dict, JSON).
_URL_PASSWORD = re.compile(r"((?:^|://|\s)[^:@/\s'\"]*:)([^@/\s]*)@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#\s]*)")
_KEYWORD_PASSWORD = re.compile(r"((?<![?&])\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)")
_ITEM_PASSWORD = re.compile(r"""(["']password["']\s*:\s*)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""", re.IGNORECASE)


def passwords_in(text):
    """The passwords written in `text` (in URLs, keyword strings, password items), as written and decoded."""
    found = set()
    for pattern in (_URL_PASSWORD, _QUERY_PASSWORD, _KEYWORD_PASSWORD, _ITEM_PASSWORD):
        for match in pattern.finditer(text):
            value = match.group(2)
            if value[:1] in "'\"" and value[-1:] == value[:1] and len(value) >= 2:
                value = value[1:-1]
            found.update((value, urllib.parse.unquote(value), re.sub(r"\\(.)", r"\1", value)))
    return {password for password in found if password and password != MASK}


def redact(text, secrets=()):
    """`text` without any password it may quote (see the module docstring); `secrets` are more strings to remove."""
    if not isinstance(text, str):
        return text
    known, pieces = _known_secrets()
    for secret in sorted(set(known).union(secrets), key=len, reverse=True):
        if secret not in text:
            continue
        if len(secret) >= _MIN_FRAGMENT:
            text = text.replace(secret, MASK)
        else:  # a short password: only where it stands alone, or every "p" of a message would go
            text = re.sub(r"(?<!\w)" + re.escape(secret) + r"(?!\w)", MASK, text)
    if pieces:
        # libpq quotes the token it choked on ("pa" of "pa/ss", "ss@host" of "p@ss@host"): a quoted token holding a
        # piece of a password goes whole.
        text = re.sub(r'"([^"\n]*)"', lambda m: f'"{MASK}"' if pieces & set(re.split(_SEPARATORS, m.group(1)))
                      else m.group(), text)
    # Any URL's user info, however many, and every password= and password item.
    text = _URL_PASSWORD.sub(r"\1" + MASK + "@", text)
    text = _QUERY_PASSWORD.sub(r"\1" + MASK, text)
    text = _KEYWORD_PASSWORD.sub(r"\1" + MASK, text)
    return _ITEM_PASSWORD.sub(r"\1'" + MASK + "'", text)


def _known_secrets():
    for name in _ENV_URLS:
        remember(os.environ.get(name))
    password = os.environ.get("PGPASSWORD")
    if password:
        remember(f"password='{password}'")
    with _lock:
        secrets = {secret for found, _ in _remembered.values() for secret in found}
        pieces = {piece for _, found in _remembered.values() for piece in found}
    return sorted(secrets, key=len, reverse=True), pieces


def _secrets_of(url):
    """(the strings that would give away the password of `url`, the pieces of it a parser error may quote)."""
    secrets = set()
    parts = _parse(url)
    password = parts.get("password") if parts else None
    if password:
        secrets.update({password, urllib.parse.quote(password, safe=""), urllib.parse.quote(password)})
    secrets.update(_raw_passwords(url))
    found, pieces = set(), set()
    for secret in secrets:
        found.add(secret)
        split = {piece for piece in re.split(_SEPARATORS, secret) if piece}
        found.update(piece for piece in split if len(piece) >= _MIN_FRAGMENT)
        pieces.update(piece for piece in split if len(piece) >= 2)
    return found - {""}, pieces


def _raw_passwords(url):
    """The password as written in the text, even where the URL is too broken to parse: in a URI, from the ':' after
    the user to the last '@' before the path; in a keyword string, the value of password= up to the next key."""
    raw = []
    uri = re.match(r"^\s*[a-z][a-z0-9+.-]*://([^:@]*):(.*)@", url, re.IGNORECASE | re.DOTALL)
    if uri:
        raw.append(uri.group(2))
    raw += re.findall(r"[?&]password=([^&#]*)", url)
    keyword = re.search(r"(?<![?&])\bpassword\s*=\s*('(?:[^'\\]|\\.)*'?|.*?)(?=\s+\w+\s*=|$)", url, re.DOTALL)
    if keyword:
        raw.append(keyword.group(1).strip("'"))
    return [value for value in raw if value]


def _parse(url):
    if not isinstance(url, str):
        return None
    from psycopg2.extensions import parse_dsn

    try:
        return parse_dsn(url)
    except Exception:  # noqa: BLE001 - a URL libpq cannot parse names nothing
        return None


# --- control characters -------------------------------------------------------------------------------------------

# Escaped: C0 and C1 controls and DEL, and outside ASCII every character Unicode files as a control (Cc), a format
# character (Cf: bidirectional marks, embeddings, overrides and isolates, zero-width spaces and joiners, the BOM,
# U+061C), a line or paragraph separator (Zl, Zp) or a lone surrogate (Cs, which JSON can carry and no page can
# encode). They are invisible or reorder the text around them ("gnp.exe" shown as "exe.png"): shown as escapes, a
# reader sees they are there. The category comes from the running Python's Unicode database, so a newer Unicode's
# format characters are escaped too.
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Everything but printable ASCII: written as a negated class, which compiles in microseconds (the range up to
# U+10FFFF took 9 ms, paid by every command at start).
_CANDIDATE = re.compile(r"[^\x20-\x7e]")
_HIDDEN = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))
_KEPT_IN_TEXT = "\n\t"  # a traceback's lines and indentation stay readable


def printable(text, multiline=False):
    """`text` with control, format and separator characters as Python escapes (`\\u202e`); other text unchanged.
    `multiline` keeps newlines and tabs (tracebacks, indented JSON)."""
    text = str(text)
    pattern = _ASCII_CONTROL if text.isascii() else _CANDIDATE
    kept = _KEPT_IN_TEXT if multiline else ""
    return pattern.sub(lambda match: _escape(match.group(), kept), text)


def _escape(char, kept):
    if char in kept or (char > "\x7f" and unicodedata.category(char) not in _HIDDEN):
        return char
    return char.encode("unicode_escape", "backslashreplace").decode("ascii")
