"""The web dashboard (DESIGN §12): a Flask blueprint, `exekutor.dashboard.blueprint`, and the standalone
`exekutor-gevent dashboard` command.

Mount it under any prefix and guard it with the application's own login (see docs/dashboard.md):

    from exekutor.dashboard import blueprint
    app.register_blueprint(blueprint, url_prefix="/admin/jobs")

The blueprint is created on first access, so that `exekutor-gevent` (which registers the command) still works
without Flask installed: only using the dashboard needs the `dashboard` extra.
"""

__all__ = ["blueprint", "create_app"]


def __getattr__(name):
    if name == "blueprint":
        from exekutor.dashboard.views import blueprint

        return blueprint
    if name == "create_app":
        from exekutor.dashboard.views import create_app

        return create_app
    raise AttributeError(f"module 'exekutor.dashboard' has no attribute {name!r}")
