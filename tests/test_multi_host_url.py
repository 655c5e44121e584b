"""A multi-host URL is tried host by host under gevent, each with connect_timeout of its own (exekutor.db.connection
.per_host): the split keeps libpq's order, pairing and options, and leaves alone what it cannot split."""
import psycopg2.extensions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exekutor.db.connection import on_read_only_server, per_host


def test_hosts_and_ports_are_paired_in_order_with_every_other_option_kept():
    singles = per_host("host=a,b port=1,2 dbname=app user=u target_session_attrs=read-write")
    assert [psycopg2.extensions.parse_dsn(single) for single in singles] == [
        {"host": "a", "port": "1", "dbname": "app", "user": "u", "target_session_attrs": "read-write"},
        {"host": "b", "port": "2", "dbname": "app", "user": "u", "target_session_attrs": "read-write"}]


def test_a_url_and_one_port_for_every_host():
    singles = per_host("postgresql://u@a,b:5433/app?target_session_attrs=read-write")
    assert [psycopg2.extensions.parse_dsn(single)["host"] for single in singles] == ["a", "b"]
    assert per_host("host=a,b port=7")[1] == "host=b port=7"


@pytest.mark.parametrize("url", ["host=a port=1", "host=a,b,c port=1,2", "host=a,b target_session_attrs=prefer-standby",
                                 "not a dsn ="])
def test_what_cannot_or_need_not_be_split_is_left_to_libpq(url):
    assert per_host(url) == [url]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True), min_size=2, max_size=5),
       st.lists(st.integers(1, 65535), min_size=2, max_size=5))
def test_any_host_list_splits_into_its_hosts_in_order(hosts, ports):
    ports = (ports * len(hosts))[:len(hosts)]
    url = psycopg2.extensions.make_dsn(host=",".join(hosts), port=",".join(map(str, ports)), dbname="x")
    parsed = [psycopg2.extensions.parse_dsn(single) for single in per_host(url)]
    assert [(p["host"], int(p["port"]), p["dbname"]) for p in parsed] == [(h, n, "x") for h, n in zip(hosts, ports)]


def test_read_only_server_errors_are_told_from_others(db):
    with db.cursor() as cursor:
        cursor.execute("BEGIN READ ONLY")
        with pytest.raises(psycopg2.Error) as raised:
            cursor.execute("CREATE TEMP TABLE t (x int)")
        cursor.execute("ROLLBACK")
        with pytest.raises(psycopg2.Error) as other:
            cursor.execute("SELECT 1/0")
    assert on_read_only_server(raised.value) and not on_read_only_server(other.value)
