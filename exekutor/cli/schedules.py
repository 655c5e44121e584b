"""`exekutor-gevent schedules [--json]`: the recurring jobs, with their last and next run (DESIGN §11).

Lists what the workers wrote to exekutor_schedules, plus the config file's `schedules:` section and, with `--app`,
the schedules the application's modules declare with `@exekutor.periodic`. Times are the database's; a schedule
that cannot be computed or names an unregistered job gets a warning line. Exit status: 0, also when there are no
schedules; 1 the database failed or its tables are missing; 2 bad input.
"""
import click

from exekutor.cli.common import (
    app_import_failure,
    config_options,
    database_label,
    fail,
    load_config,
    option,
    with_connection,
)


@click.command()
@config_options
@option("--app", multiple=True, help="Also list the schedules these modules declare (@exekutor.periodic).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
def schedules(configfile, env, database_url, app, as_json):
    """List the recurring jobs with their last and next run."""
    from exekutor import config, info
    from exekutor.schedule_overview import overview
    from exekutor.schedules import active_schedules

    load_config(configfile, env, {"database_url": database_url})
    _import(app)
    active = active_schedules(config.get("schedules"))
    entries = with_connection(lambda conn: overview(conn, active))
    if as_json:
        click.echo(info.to_json({"schedules": entries}, database_label()))
    elif entries:
        for line in info.render_schedules(entries):
            click.echo(line)
    else:
        click.echo("no schedules (none in the database, the config files or --app)", err=True)


def _import(modules):
    """As `start --app` does (from the current directory; `module:factory` calls the factory)."""
    if not modules:
        return  # nor import the worker's machinery for nothing
    from exekutor.worker.process import ApplicationImportError, import_applications

    try:
        import_applications(list(modules))
    except ApplicationImportError as error:
        fail(app_import_failure(error))
