"""`exekutor-gevent queues list|pause NAME|resume NAME [--json]`: queues as flow control sees them (DESIGN §13).

`list` shows every queue with pending or executing jobs or a row in exekutor_queues (paused, limited, or once so):
its paused state, its limits, and its pending, held-back (by reason) and executing jobs, with info's figures
(exekutor.info.queue_overview: index lookups, big counts estimated and marked "~"). `pause` and `resume` are
exekutor.pause_queue and resume_queue. Exit status: 0 done, also when the queue already was in the state asked
for (the line says so) or there are no queues; 1 the database failed or its tables are missing; 2 bad input.
"""
import click

from exekutor.cli.common import config_options, database_label, fail, load_config, with_connection


@click.group()
def queues():
    """List queues with their limits and held-back jobs; pause and resume them."""


def _json_option(command):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text.")(command)


@queues.command("list")
@_json_option
@config_options
def list_command(as_json, configfile, env, database_url):
    """Show each queue: paused or not, its limits, its pending, held-back and executing jobs."""
    from exekutor import info

    load_config(configfile, env, {"database_url": database_url})
    rows = with_connection(_collect)
    if as_json:
        click.echo(info.to_json({"queues": rows}, database_label()))
    elif rows:
        for line in render(rows):
            click.echo(line)
    else:
        click.echo("no queues (none has pending or executing jobs, and none was paused or limited)", err=True)


def _collect(conn):
    from exekutor.info import queue_overview

    with conn.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")  # one snapshot for all
        return queue_overview(cursor)


COLUMNS = [("QUEUE", "<"), ("STATE", "<"), ("CONCURRENCY", ">"), ("RATE LIMIT", ">"), ("PENDING", ">"),
           ("HELD BACK", "<"), ("EXECUTING", ">")]


def render(rows):
    """The table of `queues list`: a paused queue's state is a warning."""
    from exekutor.info import WARN, held_back_text, table, timestamp

    return table(COLUMNS, [
        [row["queue"],
         (f"paused since {timestamp(row['paused_at'])}", WARN) if row["paused"] else "active",
         str(row["concurrency"] or "-"), row["rate_limit"] or "-",
         ("~" if row["estimated"] else "") + str(row["pending"]), held_back_text(row), str(row["executing"])]
        for row in rows])


@queues.command("pause")
@click.argument("name")
@_json_option
@config_options
def pause_command(name, as_json, configfile, env, database_url):
    """Pause queue NAME: no job of it starts from the next reservation of every worker; running jobs finish and
    jobs can still be enqueued."""
    _change(name, as_json, configfile, env, database_url, pause=True)


@queues.command("resume")
@click.argument("name")
@_json_option
@config_options
def resume_command(name, as_json, configfile, env, database_url):
    """Resume queue NAME: the jobs its pause held back start again at once."""
    _change(name, as_json, configfile, env, database_url, pause=False)


def _change(name, as_json, configfile, env, database_url, pause):
    from exekutor import info
    from exekutor.definitions import check_queue
    from exekutor.display import printable
    from exekutor.queue_control import pause_queue, queue_settings, resume_queue

    load_config(configfile, env, {"database_url": database_url})
    try:
        check_queue(name)
    except ValueError as error:
        fail(str(error))

    def act(conn):
        changed = (pause_queue if pause else resume_queue)(name, connection=conn)
        with conn.cursor() as cursor:
            state = queue_settings(cursor, [name]).get(name)
        conn.commit()  # a resume's two statements (the row, then the held-back jobs) commit together
        return changed, state

    changed, state = with_connection(act)
    paused_at = state["paused_at"] if state else None
    if as_json:
        click.echo(info.to_json({"queue": name, "paused": paused_at is not None, "paused_at": paused_at,
                                 "changed": changed}, database_label()))
        return
    shown = printable(name)  # a name may hold control characters: escaped, as in every table
    if pause:
        click.echo(f"paused queue {shown}" if changed else
                   f"queue {shown} was already paused (since {info.timestamp(paused_at)})")
    else:
        click.echo(f"resumed queue {shown}: its held-back jobs start again" if changed else
                   f"queue {shown} was not paused")
