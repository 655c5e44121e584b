"""`exekutor-gevent migrate [--sql]`: create or upgrade exekutor's tables (exekutor.db.migrations)."""
import click

from exekutor.cli.common import config_options, database_label, load_config, with_connection


@click.command()
@config_options
@click.option("--sql", is_flag=True, help="Print the migrations as SQL instead of applying them.")
def migrate(configfile, env, database_url, sql):
    """Create or upgrade exekutor's tables (idempotent, safe to run from several hosts at once)."""
    from exekutor.db import migrations

    if sql:
        click.echo(migrations.migration_sql(), nl=False)
        return
    load_config(configfile, env, {"database_url": database_url})
    # Which database first, before connecting: migrating the wrong one (the embedded server because a variable
    # was not exported) must be obvious. On stderr, so that stdout stays the one line of the result.
    click.echo(f"migrating exekutor's tables in {_migrate_target()}", err=True)
    applied = with_connection(lambda conn: migrations.migrate(conn=conn))
    click.echo(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema is up to date")


def _migrate_target():
    from exekutor import config
    from exekutor.db import embedded

    if config.database_url():
        return database_label()
    return f"{database_label()} in {embedded.data_dir()}"
