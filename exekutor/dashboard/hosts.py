"""Which `Host` names the dashboard answers: a defence against DNS rebinding.

A page on a name the attacker controls can make that name resolve to 127.0.0.1 after loading; the browser then
sends the dashboard requests as that name's own, same-origin, so it reads every page, and the CSRF origin check
(which compares Origin with Host) passes. Only the Host header still tells: a request whose host name is not one
the dashboard is meant for is refused with 400 before anything is read.

The names are the `dashboard_allowed_hosts` option plus, for the standalone server, its bound address and
`localhost` (kept by `create_app` in `app.extensions`). With no name at all (the blueprint in an application
that did not set the option), every host is answered: the application's own checks (Flask's `TRUSTED_HOSTS`)
apply then.
"""
import urllib.parse

from flask import abort, current_app, request

from exekutor import config

EXTENSION = "exekutor_dashboard_hosts"


def host_name(host):
    """The name of a Host header, without its port or IPv6 brackets, lower-case; None if it has none."""
    try:
        return urllib.parse.urlsplit("//" + host).hostname or None
    except ValueError:  # an unclosed bracket
        return None


def allowed_names():
    names = config.get("dashboard_allowed_hosts") + list(current_app.extensions.get(EXTENSION, ()))
    return {host_name(name) or name.lower() for name in names}


def check():
    """before_request: 400, with no data, for a request to a host name the dashboard is not meant for."""
    names = allowed_names()
    if names and host_name(request.host) not in names:
        abort(400, "unknown host name: this dashboard answers only the names it is configured for "
                   "(dashboard_allowed_hosts, --allowed-host)")
