"""`exekutor-gevent info`: the workers per host, the pending jobs per queue and the recent failures
(exekutor.info builds and renders the report)."""
import os

import click

from exekutor.cli.common import (
    config_options,
    database_label,
    fail,
    load_config,
    option,
    parse_seconds,
    with_connection,
)


@click.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")
@option("--since", default=None, help="Show the failures of this period (24h, 90m, 7d; default 24h).")
def info(configfile, env, database_url, as_json, since):
    """Show the workers per host, the pending jobs per queue and the recent failures."""
    from exekutor import info as report

    load_config(configfile, env, {"database_url": database_url})
    seconds = parse_seconds(since, "--since", unit="h") * 3600 if since else report.FAILURES_SINCE
    if seconds > report.MAX_FAILURES_SINCE:
        fail(f"invalid value for --since: {since!r} is longer than 100 years")
    data = with_connection(lambda conn: report.collect(conn, seconds))
    if as_json:
        click.echo(report.to_json(data, database_label()))
        return
    # click.echo drops the styles unless stdout is a terminal; NO_COLOR (no-color.org) drops them always.
    color = False if os.environ.get("NO_COLOR") else None
    for line in report.render(data, database_label()):
        click.echo(line, color=color)
