"""CSRF protection of the dashboard's actions, without a session: a signed double-submit token.

A browser gets a random nonce in a cookie (HttpOnly, SameSite=Strict, limited to the dashboard's path); each form
carries HMAC(secret, nonce) in a hidden field. A POST is accepted only when the field matches the cookie's nonce.
Another site can neither read the cookie nor compute the HMAC, and SameSite=Strict keeps the cookie off its
cross-site requests anyway. The secret is the Flask app's SECRET_KEY when it has one (so that every process of
an application accepts the others' tokens), else random per process: the standalone server has no login and no
configuration to hold one, and a token that dies with the process only means a form must be reloaded.

A request whose Origin (or, without one, Referer) names another site is refused as well.
"""
import hashlib
import hmac
import re
import secrets
import urllib.parse

from flask import abort, current_app, g, request, url_for

COOKIE = "exekutor_dashboard_csrf"
FIELD = "csrf_token"
_PROCESS_SECRET = secrets.token_bytes(32)
_NONCE = re.compile(r"[0-9a-f]{64}")


def _secret():
    key = current_app.secret_key
    if not key:
        return _PROCESS_SECRET
    return key if isinstance(key, bytes) else str(key).encode()


def _sign(nonce):
    return hmac.new(_secret(), b"exekutor-dashboard-csrf:" + nonce.encode(), hashlib.sha256).hexdigest()


def _cookie_nonce():
    nonce = request.cookies.get(COOKIE, "")
    return nonce if _NONCE.fullmatch(nonce) else None


def token():
    """The token for this browser's forms (a nonce is made, and its cookie set, on first use)."""
    if "exekutor_csrf_nonce" not in g:
        g.exekutor_csrf_nonce = _cookie_nonce()
        if g.exekutor_csrf_nonce is None:
            g.exekutor_csrf_nonce = g.exekutor_csrf_new = secrets.token_hex(32)
    return _sign(g.exekutor_csrf_nonce)


def set_cookie(response):
    """after_request: send the nonce a page's forms were signed for, if it is a new one."""
    nonce = g.pop("exekutor_csrf_new", None)
    if nonce:
        response.set_cookie(COOKIE, nonce, httponly=True, samesite="Strict", secure=request.is_secure,
                            path=url_for(".overview"))
    return response


def check():
    """Abort with 403 unless the POST carries a token that matches this browser's cookie and comes from here."""
    nonce, sent = _cookie_nonce(), request.form.get(FIELD, "")
    if nonce is None or not sent or not hmac.compare_digest(_sign(nonce), sent):
        abort(403, "missing or invalid CSRF token: reload the page and try again")
    if not _same_origin():
        abort(403, "cross-site request refused")


def _same_origin():
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return source is None  # "null": a sandboxed frame or a redirect chain from elsewhere
    # The host only: behind a TLS-terminating proxy the scheme the app sees is not the browser's.
    return urllib.parse.urlsplit(source).netloc == request.host
