"""Tests of exekutor.config: defaults, layered sources, parsing, one-line errors (no database)."""

import json
import logging
import pathlib
import textwrap

import pytest

import exekutor.config
from exekutor import config
from exekutor.errors import ConfigError

DEFAULTS = {
    "database_url": None,
    "default_queue_priority": 16383,
    "enqueue_pool_size": 10,
    "json_serializer": "json",
    "logger": "exekutor",
    "set_db_connection_name": False,
    "enable_listener": True,
    "polling_interval": 60,
    "polling_jitter": 0.1,
    "min_execution_threads": 1,
    "max_execution_threads": 100,
    "max_execution_thread_idletime": 60,
    "healthcheck_port": None,
    "healthcheck_host": "127.0.0.1",
    "healthcheck_timeout": 30,
    "max_blocking_time": 5,
    "blocking_timeout": 120,
    "max_job_rescues": 3,
    "metrics": None,
    "quiet": False,
    "log_level": "info",
    "log_job_outcomes": False,
    "wait_for_termination": 120,
    "queues": None,
    "min_priority": None,
    "max_priority": None,
    "delete_completed_jobs": False,
    "delete_failed_jobs": False,
    "delete_discarded_jobs": False,
    "worker_timeout": 60,
    "heartbeat_interval": 12,
    "identifier": None,
    "imports": [],
    "statement_timeout": 30,
    "connect_timeout": 10,
    "enable_scheduler": True,
    "schedules": {},
    "dashboard_allow_actions": False,
    "dashboard_show_arguments": False,
    "dashboard_allowed_hosts": [],
}


@pytest.fixture(autouse=True)
def clean():
    config.reset()
    yield
    config.reset()


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def error_of(call, *args, **kwargs):
    """The message of the ConfigError that call raises; also checks that it is one line."""
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults and the module as config object -------------------------------------------------------------------


def test_every_option_has_a_tested_default():
    assert set(DEFAULTS) == set(config.OPTIONS)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_default(name):
    assert config.get(name) == DEFAULTS[name]
    assert config.source_of(name) == "default"


def test_defaults_pass_their_own_validation():
    for option in config.OPTIONS.values():
        assert option.convert(option.default) == option.default, option.name


def test_default_list_is_not_shared():
    config.get("imports").append("oops")
    assert config.get("imports") == []


def test_module_attribute_reads_effective_value():
    config.configure(polling_interval="2m")
    assert exekutor.config.polling_interval == 120
    config.load(environ={"EXEKUTOR_POLLING_INTERVAL": "5"})
    assert exekutor.config.polling_interval == 5


def test_module_attribute_assignment_sets_code_layer():
    exekutor.config.polling_interval = 5
    assert config.get("polling_interval") == 5
    assert config.source_of("polling_interval") == "code"


def test_module_attribute_assignment_validates_and_changes_nothing():
    exekutor.config.polling_interval = 5
    message = error_of(setattr, exekutor.config, "polling_interval", -1)
    assert message.startswith("invalid value for polling_interval in code: expected a duration > 0")
    assert config.get("polling_interval") == 5


def test_module_attribute_typo_is_an_error():
    message = error_of(setattr, exekutor.config, "poling_interval", 5)
    assert message == "unknown option 'poling_interval' in code (did you mean 'polling_interval'?)"
    assert not hasattr(exekutor.config, "poling_interval")


def test_only_database_url_is_shadowed_by_a_module_global():
    # Any other module global named like an option would hide that option from attribute reads.
    assert set(config.OPTIONS) & set(vars(config)) == {"database_url"}
    exekutor.config.database_url = "postgresql://localhost/app"
    assert config.database_url() == "postgresql://localhost/app"


def test_unknown_attribute_read_is_attribute_error():
    with pytest.raises(AttributeError):
        _ = exekutor.config.no_such_thing


def test_get_unknown_option():
    assert error_of(config.get, "polling_intervall") == (
        "unknown option 'polling_intervall' (did you mean 'polling_interval'?)")


def test_reset_drops_every_layer(tmp_path):
    path = write(tmp_path, "exekutor.yml", "exekutor:\n  queues: [a]\n")
    config.configure(polling_interval=1)
    config.load([path], environ={"EXEKUTOR_QUIET": "yes"}, overrides={"identifier": "w"})
    config.reset()
    assert [config.source_of(n) for n in ("polling_interval", "queues", "quiet", "identifier")] == ["default"] * 4


# --- precedence ---------------------------------------------------------------------------------------------------


def test_precedence_code_yaml_ini_env_overrides(tmp_path):
    yml = write(tmp_path, "exekutor.yml", """
        exekutor:
          polling_interval: 20
          queues: [yaml]
          quiet: true
        """)
    ini = write(tmp_path, "exekutor.ini", """
        [exekutor]
        polling_interval = 30
        queues = ini
        """)
    config.configure(polling_interval=10, queues=["code"], quiet=False, identifier="code-id")
    assert (config.get("polling_interval"), config.source_of("polling_interval")) == (10, "code")

    config.load([yml])
    assert (config.get("polling_interval"), config.source_of("polling_interval")) == (20, f"{yml} line 2")

    config.load([yml, ini])
    assert (config.get("polling_interval"), config.source_of("polling_interval")) == (30, f"{ini} line 2")
    assert (config.get("quiet"), config.source_of("quiet")) == (True, f"{yml} line 4")  # only in the first file
    assert (config.get("identifier"), config.source_of("identifier")) == ("code-id", "code")

    config.load([yml, ini], environ={"EXEKUTOR_POLLING_INTERVAL": "40"})
    assert config.get("polling_interval") == 40
    assert config.source_of("polling_interval") == "environment variable EXEKUTOR_POLLING_INTERVAL"
    assert config.get("queues") == ["ini"]

    config.load([yml, ini], environ={"EXEKUTOR_POLLING_INTERVAL": "40"}, overrides={"polling_interval": 50})
    assert (config.get("polling_interval"), config.source_of("polling_interval")) == (50, "command line")


def test_later_file_wins_regardless_of_format(tmp_path):
    ini = write(tmp_path, "exekutor.ini", "[exekutor]\npolling_interval = 30\n")
    yml = write(tmp_path, "exekutor.yml", "exekutor:\n  polling_interval: 20\n")
    config.load([ini, yml])
    assert config.get("polling_interval") == 20


def test_load_replaces_previous_load_but_keeps_code(tmp_path):
    config.configure(quiet=True)
    config.load(environ={"EXEKUTOR_POLLING_INTERVAL": "40"})
    config.load(environ={})
    assert config.source_of("polling_interval") == "default"
    assert config.source_of("quiet") == "code"


def test_override_source_label_and_none_skipped():
    config.load(environ={}, overrides={"queues": ("a", "b"), "identifier": None}, override_source="--queue")
    assert (config.get("queues"), config.source_of("queues")) == (["a", "b"], "--queue")
    assert config.source_of("identifier") == "default"


def test_override_unknown_key():
    message = error_of(config.load, environ={}, overrides={"max_thread": 5})
    assert message == "unknown option 'max_thread' in command line (did you mean 'max_execution_threads'?)"


def test_unknown_exekutor_variables_are_ignored():
    config.load(environ={"EXEKUTOR_TEST_DATABASE_URL": "x", "EXEKUTOR_ENV": "production", "EXEKUTOR_QUIET": "1"})
    assert config.get("quiet") is True
    assert config.get("database_url") is None


def test_failed_load_changes_nothing(tmp_path):
    good = write(tmp_path, "good.yml", "exekutor:\n  polling_interval: 5\n")
    config.load([good])
    bad = write(tmp_path, "bad.yml", "exekutor:\n  polling_interval: 7\n  quiet: maybe\n")
    error_of(config.load, [bad])
    assert (config.get("polling_interval"), config.source_of("polling_interval")) == (5, f"{good} line 2")


def test_paths_may_be_pathlib(tmp_path):
    path = pathlib.Path(write(tmp_path, "exekutor.yaml", "exekutor:\n  quiet: yes\n"))
    config.load([path])
    assert config.get("quiet") is True


# --- per-environment sections -----------------------------------------------------------------------------------


YAML_WITH_ENVS = """
    exekutor:
      queues: [default]
      polling_interval: 60
    production:
      exekutor:
        polling_interval: 30s
    development:
      other_tool: 1
    """


def test_yaml_environment_section(tmp_path):
    path = write(tmp_path, "exekutor.yml", YAML_WITH_ENVS)
    config.load([path], env="production")
    assert (config.get("polling_interval"), config.source_of("polling_interval")) == (30, f"{path} line 6")
    assert config.get("queues") == ["default"]


def test_yaml_environment_section_not_chosen_or_absent(tmp_path):
    path = write(tmp_path, "exekutor.yml", YAML_WITH_ENVS)
    config.load([path])
    assert config.get("polling_interval") == 60
    for env in ("development", "staging"):  # development: a section without exekutor: belongs to someone else
        assert error_of(config.load, [path], env=env) == (
            f"--env '{env}' names no section of the config files ({path}): expected '{env}: exekutor:' in YAML "
            f"or '[exekutor:{env}]' in INI")
    assert config.get("polling_interval") == 60  # nothing changed


def test_an_env_section_in_any_of_the_files_is_enough_and_none_at_all_is_an_error(tmp_path):
    with_env, without = write(tmp_path, "a.yml", YAML_WITH_ENVS), write(tmp_path, "b.ini", "[exekutor]\n")
    config.load([without, with_env], env="production")
    assert config.get("polling_interval") == 30
    assert error_of(config.load, [], env="production") == (
        "--env 'production' names no section of the config files (none was read): expected 'production: "
        "exekutor:' in YAML or '[exekutor:production]' in INI")


def test_ini_environment_section(tmp_path):
    path = write(tmp_path, "exekutor.ini", """
        [exekutor]
        polling_interval = 60
        queues = default

        [exekutor:production]
        polling_interval = 30s
        """)
    config.load([path], env="production")
    assert (config.get("polling_interval"), config.source_of("polling_interval")) == (30, f"{path} line 6")
    assert (config.get("queues"), config.source_of("queues")) == (["default"], f"{path} line 3")
    assert "--env 'staging' names no section" in error_of(config.load, [path], env="staging")


def test_yaml_merge_keys(tmp_path):
    path = write(tmp_path, "exekutor.yml", """
        base: &base
          quiet: true
        exekutor:
          <<: *base
          polling_interval: 5
        """)
    config.load([path])
    assert (config.get("quiet"), config.source_of("quiet")) == (True, f"{path} line 2")


def test_empty_exekutor_section_is_fine(tmp_path):
    path = write(tmp_path, "exekutor.yml", "exekutor:\n")
    config.load([path])
    assert config.source_of("polling_interval") == "default"


# --- file errors --------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.yml")
    assert error_of(config.load, [path]) == f"config file not found: {path}"


def test_unsupported_extension(tmp_path):
    path = write(tmp_path, "exekutor.toml", "x = 1\n")
    assert error_of(config.load, [path]).startswith(f"unsupported config file {path}")


def test_yaml_without_root(tmp_path):
    path = write(tmp_path, "exekutor.yml", "production:\n  exekutor:\n    quiet: true\n")
    assert error_of(config.load, [path], env="production") == f"{path} has no 'exekutor:' root key"


def test_yaml_root_not_a_mapping(tmp_path):
    path = write(tmp_path, "exekutor.yml", "exekutor: 5\n")
    assert error_of(config.load, [path]) == f"'exekutor' in {path} line 1 must be a mapping of options"


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "exekutor.yml", "exekutor:\n  queues: [a\n  quiet: true\n")
    assert error_of(config.load, [path]).startswith(f"invalid YAML in {path} line ")


def test_ini_without_section(tmp_path):
    path = write(tmp_path, "setup.cfg", "[metadata]\nname = x\n")
    assert error_of(config.load, [path]) == f"{path} has no [exekutor] section"


def test_invalid_ini(tmp_path):
    path = write(tmp_path, "exekutor.ini", "polling_interval = 5\n")
    assert error_of(config.load, [path]).startswith(f"invalid INI file {path}: ")


def test_invalid_ini_error_hides_password(tmp_path):
    path = write(tmp_path, "exekutor.ini", "database_url = postgresql://u:s3cret@db/app\n")
    message = error_of(config.load, [path])
    assert message.startswith(f"invalid INI file {path}: ")
    assert "s3cret" not in message


def test_yaml_environment_section_not_a_mapping(tmp_path):
    path = write(tmp_path, "exekutor.yml", "exekutor:\n  quiet: true\nproduction:\n  exekutor: [a]\n")
    assert error_of(config.load, [path], env="production") == (
        f"'exekutor' in {path} line 4 must be a mapping of options")


def test_relative_path_is_reported_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "exekutor.yml", "exekutor:\n  polling_interval: abc\n")
    message = error_of(config.load, ["exekutor.yml"])
    assert message.startswith("invalid value for polling_interval in exekutor.yml line 2:")


# --- exact messages ---------------------------------------------------------------------------------------------


def test_unknown_key_in_yaml_with_hint(tmp_path):
    path = write(tmp_path, "exekutor.yml", "exekutor:\n  queues: [a]\n  poling_interval: 5\n")
    assert error_of(config.load, [path]) == (
        f"unknown option 'poling_interval' in {path} line 3 (did you mean 'polling_interval'?)")


def test_unknown_key_without_hint(tmp_path):
    path = write(tmp_path, "exekutor.ini", "[exekutor]\n\nzzz = 5\n")
    assert error_of(config.load, [path]) == f"unknown option 'zzz' in {path} line 3"


def test_unknown_key_in_configure():
    assert error_of(config.configure, max_execution_thread=5) == (
        "unknown option 'max_execution_thread' in code (did you mean 'max_execution_threads'?)")


def test_bad_value_in_yaml_with_line(tmp_path):
    path = write(tmp_path, "exekutor.yml", "# comment\n\nexekutor:\n  polling_interval: abc\n")
    assert error_of(config.load, [path]) == (
        f"invalid value for polling_interval in {path} line 4: expected a duration > 0 "
        "and at most 100 years (seconds, or a number with unit like '90s', '15m', '4h'), got 'abc'")


def test_bad_value_in_code():
    assert error_of(config.configure, default_queue_priority=0) == (
        "invalid value for default_queue_priority in code: expected an integer from 1 to 32767, got 0")


def test_bad_value_in_environment():
    message = error_of(config.load, environ={"EXEKUTOR_MAX_EXECUTION_THREADS": "lots"})
    assert message == ("invalid value for max_execution_threads in environment variable "
                       "EXEKUTOR_MAX_EXECUTION_THREADS: expected an integer from 1 to 10000, got 'lots'")


def test_failed_configure_changes_nothing():
    error_of(config.configure, polling_interval=5, quiet="maybe")
    assert config.source_of("polling_interval") == "default"


# --- parsing of each type ---------------------------------------------------------------------------------------

GOOD = [
    ("default_queue_priority", "100", 100),
    ("default_queue_priority", 1, 1),
    ("default_queue_priority", 32767, 32767),
    ("json_serializer", "orjson", "orjson"),
    ("json_serializer", "pkg.mod:obj", "pkg.mod:obj"),
    ("json_serializer", json, json),
    ("logger", "myapp.jobs", "myapp.jobs"),
    ("set_db_connection_name", "YES", True),
    ("set_db_connection_name", "on", True),
    ("set_db_connection_name", "1", True),
    ("enable_listener", "off", False),
    ("enable_listener", "No", False),
    ("enable_listener", "0", False),
    ("enable_listener", False, False),
    ("polling_interval", "90s", 90),
    ("polling_interval", "1.5h", 5400),
    ("polling_interval", "500ms", 0.5),
    ("polling_interval", "2.5", 2.5),
    ("polling_interval", 0.25, 0.25),
    ("polling_jitter", "0", 0),
    ("polling_jitter", 1, 1),
    ("polling_jitter", "0.25", 0.25),
    ("max_execution_threads", "10000", 10000),
    ("max_execution_thread_idletime", "1d", 86400),
    ("healthcheck_port", "8080", 8080),
    ("healthcheck_port", "none", None),
    ("healthcheck_port", "", None),
    ("healthcheck_port", None, None),
    ("healthcheck_host", "0.0.0.0", "0.0.0.0"),
    ("healthcheck_timeout", 45, 45),
    ("healthcheck_timeout", "90s", 1.5),
    ("healthcheck_timeout", "2h", 120),
    ("quiet", "TRUE", True),
    ("queues", "mail", ["mail"]),
    ("queues", ("a", "b"), ["a", "b"]),
    ("queues", ["q" * 63], ["q" * 63]),
    ("queues", None, None),
    ("min_priority", "5", 5),
    ("max_priority", 32767, 32767),
    ("worker_timeout", "5m", 300),
    ("heartbeat_interval", "10s", 10),
    ("identifier", "worker-1", "worker-1"),
    ("imports", ["app.jobs", "other"], ["app.jobs", "other"]),
    ("statement_timeout", 0, 0),
    ("statement_timeout", "1m", 60),
    ("connect_timeout", "5", 5),
    ("database_url", "host=db dbname=app", "host=db dbname=app"),
    ("database_url", "postgres://u@h/db", "postgres://u@h/db"),
    ("database_url", "postgresql+psycopg2://u@h/db", "postgresql://u@h/db"),
]


@pytest.mark.parametrize("name, value, expected", GOOD)
def test_good_value(name, value, expected):
    config.configure(**{name: value})
    assert config.get(name) == expected
    assert config.source_of(name) == "code"


def test_logger_object():
    logger = logging.getLogger("x")
    config.configure(logger=logger)
    assert config.get("logger") is logger


BAD = [
    ("default_queue_priority", 0),
    ("default_queue_priority", 32768),
    ("default_queue_priority", True),
    ("default_queue_priority", 1.5),
    ("default_queue_priority", "high"),
    ("json_serializer", 5),
    ("json_serializer", object()),
    ("logger", 5),
    ("set_db_connection_name", "maybe"),
    ("set_db_connection_name", 1),
    ("enable_listener", None),
    ("polling_interval", 0),
    ("polling_interval", -1),
    ("polling_interval", "abc"),
    ("polling_interval", "10 minutes"),
    ("polling_interval", True),
    ("polling_interval", float("inf")),
    ("polling_jitter", 1.5),
    ("polling_jitter", -0.1),
    ("polling_jitter", "nan"),
    ("min_execution_threads", 0),
    ("max_execution_threads", 10001),
    ("max_execution_thread_idletime", "0s"),
    ("healthcheck_port", 0),
    ("healthcheck_port", 65536),
    ("healthcheck_port", True),
    ("healthcheck_host", ""),
    ("healthcheck_host", None),
    ("healthcheck_timeout", 0),
    ("quiet", "loud"),
    ("wait_for_termination", -1),
    ("wait_for_termination", "soon"),
    ("queues", []),
    ("queues", [""]),
    ("queues", ["q" * 64]),
    ("queues", [1]),
    ("queues", 5),
    ("min_priority", 0),
    ("max_priority", 40000),
    ("worker_timeout", "-5m"),
    ("heartbeat_interval", 0),
    ("identifier", 5),
    ("imports", ["not a module"]),
    ("imports", None),
    ("statement_timeout", -1),
    ("connect_timeout", 0),
    ("database_url", "mysql://u@h/db"),
    ("database_url", "just words"),
]


@pytest.mark.parametrize("name, value", BAD)
def test_bad_value(name, value):
    message = error_of(config.configure, **{name: value})
    assert message.startswith(f"invalid value for {name} in code: expected {config.OPTIONS[name].expected}, got ")
    assert config.source_of(name) == "default"


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("yes", True), ("false", False), ("off", False), ("none", None), ("null", None),
    ("0", 0.0), ("90s", 90.0), ("2m", 120.0), ("15", 15.0),
])
def test_wait_for_termination_from_text(text, expected):
    config.load(environ={"EXEKUTOR_WAIT_FOR_TERMINATION": text})
    value = config.get("wait_for_termination")
    # type matters: "0" (kill now) must not become False (don't wait)
    assert (value, type(value)) == (expected, type(expected))


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (None, None), (0, 0.0), (30.5, 30.5)])
def test_wait_for_termination_from_code(value, expected):
    config.configure(wait_for_termination=value)
    value = config.get("wait_for_termination")
    assert (value, type(value)) == (expected, type(expected))


def test_wait_for_termination_zero_is_not_false():
    config.configure(wait_for_termination="0")
    assert config.get("wait_for_termination") is not False and config.get("wait_for_termination") == 0


# --- durations ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, unit, expected", [
    (90, "s", 90), ("90s", "s", 90), ("15m", "s", 900), ("4h", "s", 14400), ("1.5h", "s", 5400),
    ("2d", "s", 172800), ("250ms", "s", 0.25), (" 12 ", "s", 12), ("3M", "s", 180),
    ("90s", "m", 1.5), (30, "m", 30), ("2h", "m", 120),
    (48, "h", 48), ("90m", "h", 1.5), ("1d", "h", 24),
])
def test_parse_duration(value, unit, expected):
    assert config.parse_duration(value, unit) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["", "abc", "5x", "1h30m", None, True, [5], "inf"])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        config.parse_duration(value)


def test_parse_duration_rejects_unknown_unit():
    with pytest.raises(ValueError):
        config.parse_duration(5, "weeks")


def test_healthcheck_timeout_in_minutes_from_file(tmp_path):
    path = write(tmp_path, "exekutor.yml", "exekutor:\n  healthcheck_timeout: 1h\n")
    config.load([path])
    assert config.get("healthcheck_timeout") == 60
    assert config.worker_options()["healthcheck_timeout"] == 60


# --- lists --------------------------------------------------------------------------------------------------------


def test_queues_from_comma_string_in_env():
    config.load(environ={"EXEKUTOR_QUEUES": "mail, reports ,default"})
    assert config.get("queues") == ["mail", "reports", "default"]


def test_queues_from_comma_string_in_ini(tmp_path):
    path = write(tmp_path, "exekutor.ini", "[exekutor]\nqueues = a,b\nimports = app.jobs, app.more\n")
    config.load([path])
    assert config.get("queues") == ["a", "b"]
    assert config.get("imports") == ["app.jobs", "app.more"]


def test_queues_single_string_in_yaml_is_one_item(tmp_path):
    path = write(tmp_path, "exekutor.yml", "exekutor:\n  queues: mail\n")
    config.load([path])
    assert config.get("queues") == ["mail"]


def test_queues_empty_item_in_env_is_an_error():
    message = error_of(config.load, environ={"EXEKUTOR_QUEUES": "a,,b"})
    assert message == ("invalid value for queues in environment variable EXEKUTOR_QUEUES: expected a list of "
                       "queue names (1 to 63 characters each), or a mapping of queue names to their concurrency and "
                       "rate_limit, or none, got 'a,,b'")


def test_queues_none_from_env_means_all():
    config.configure(queues=["a"])
    config.load(environ={"EXEKUTOR_QUEUES": "none"})
    assert config.get("queues") is None


# --- cross checks -------------------------------------------------------------------------------------------------


def test_threads_cross_check_names_both_sources(tmp_path):
    path = write(tmp_path, "exekutor.yml", "exekutor:\n  queues: [a]\n  max_execution_threads: 10\n")
    message = error_of(config.load, [path], environ={}, overrides={"min_execution_threads": 20})
    assert message == (f"min_execution_threads (20, command line) is greater than "
                       f"max_execution_threads (10, {path} line 3)")
    assert config.source_of("max_execution_threads") == "default"


def test_threads_equal_is_fine():
    config.configure(min_execution_threads=10, max_execution_threads=10)
    assert config.worker_options()["min_threads"] == config.worker_options()["max_threads"] == 10


def test_configure_cross_check_rolls_back():
    config.configure(max_execution_threads=10)
    message = error_of(config.configure, min_execution_threads=20)
    assert message == ("min_execution_threads (20, code) is greater than max_execution_threads (10, code)")
    assert config.get("min_execution_threads") == 1


def test_attribute_assignment_cross_check():
    error_of(setattr, exekutor.config, "min_execution_threads", 200)
    assert config.get("min_execution_threads") == 1


def test_priority_cross_check():
    message = error_of(config.load, environ={"EXEKUTOR_MIN_PRIORITY": "500", "EXEKUTOR_MAX_PRIORITY": "100"})
    assert message == ("min_priority (500, environment variable EXEKUTOR_MIN_PRIORITY) is greater than "
                       "max_priority (100, environment variable EXEKUTOR_MAX_PRIORITY)")


def test_priority_cross_check_skips_unset():
    config.configure(min_priority=500)
    assert config.get("min_priority") == 500


def test_heartbeat_cross_check():
    message = error_of(config.configure, heartbeat_interval="30s")
    assert message == ("heartbeat_interval (30, code) must be less than half of worker_timeout (60, default)")
    config.configure(heartbeat_interval="29s")
    assert config.get("heartbeat_interval") == 29


def test_validate_passes_on_defaults():
    config.validate()  # raises if the defaults break their own rules
    assert config.source_of("heartbeat_interval") == "default"


# --- database URL and redaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url, redacted", [
    ("postgresql://user:s3cret@db.example:5432/app", "postgresql://user:***@db.example:5432/app"),
    ("postgres://:s3cret@db/app", "postgres://:***@db/app"),
    ("postgresql://user@db:5432/app", "postgresql://user@db:5432/app"),
    ("postgresql://db:5432/app?sslmode=require", "postgresql://db:5432/app?sslmode=require"),
    ("postgresql://db/app?user=u&password=s3cret&sslmode=require",
     "postgresql://db/app?user=u&password=***&sslmode=require"),
    ("host=db user=u password=s3cret dbname=app", "host=db user=u password=*** dbname=app"),
    ("host=db password = 's3 cr\\'et' dbname=app", "host=db password = *** dbname=app"),
    ("host=db dbname=app", "host=db dbname=app"),
    (None, None),
])
def test_redact_url(url, redacted):
    assert config.redact_url(url) == redacted


@pytest.mark.parametrize("url", ["mysql://user:s3cret@db/app", "user:s3cret@db password=s3cret"])
def test_bad_database_url_error_hides_password(url):
    message = error_of(config.configure, database_url=url)
    assert message.startswith("invalid value for database_url in code: expected a postgresql:// URL")
    assert "s3cret" not in message
    assert "***" in message


def test_bad_database_url_in_env_hides_password():
    message = error_of(config.load, environ={"EXEKUTOR_DATABASE_URL": "mysql://u:s3cret@db/app"})
    assert "s3cret" not in message and "EXEKUTOR_DATABASE_URL" in message


def test_database_url_fallbacks(monkeypatch):
    # The database fixture exports EXEKUTOR_DATABASE_URL for the whole run.
    monkeypatch.delenv("EXEKUTOR_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert config.database_url() is None
    config.load(environ={"DATABASE_URL": "postgresql://plain/app"})
    assert config.database_url() == "postgresql://plain/app"
    config.load(environ={"DATABASE_URL": "postgresql://plain/app", "EXEKUTOR_DATABASE_URL": "postgresql://ex/app"})
    assert config.database_url() == "postgresql://ex/app"
    assert config.source_of("database_url") == "environment variable EXEKUTOR_DATABASE_URL"
    config.load(environ={"DATABASE_URL": "postgresql://plain/app"}, overrides={"database_url": "postgresql://cli/a"})
    assert config.database_url() == "postgresql://cli/a"


@pytest.mark.parametrize("variable", ["EXEKUTOR_DATABASE_URL", "DATABASE_URL"])
def test_a_sqlalchemy_url_with_the_psycopg2_driver_is_the_same_database(monkeypatch, variable):
    # docs/flask.md asks for this form in the app's config; the same value in the environment must work.
    monkeypatch.delenv("EXEKUTOR_DATABASE_URL", raising=False)
    config.load(environ={variable: "postgresql+psycopg2://u:s3cret@db:6432/app"})
    assert config.database_url() == "postgresql://u:s3cret@db:6432/app"


def test_database_url_from_os_environ_without_load(monkeypatch):
    monkeypatch.setenv("EXEKUTOR_DATABASE_URL", "postgresql://ex/app")
    monkeypatch.setenv("DATABASE_URL", "postgresql://plain/app")
    assert config.database_url() == "postgresql://ex/app"


def test_bad_plain_database_url_names_its_variable():
    config.load(environ={"DATABASE_URL": "mysql://u:s3cret@db/app"})
    message = error_of(config.database_url)
    assert message.startswith("invalid value for database_url in environment variable DATABASE_URL:")
    assert "s3cret" not in message


# --- worker options -------------------------------------------------------------------------------------------------


def test_worker_options():
    config.configure(
        identifier="w1", queues=["mail"], min_priority=1, max_priority=100, enable_listener=False,
        min_execution_threads=2, max_execution_threads=50, max_execution_thread_idletime="2m",
        polling_interval="10s", polling_jitter=0.2, set_db_connection_name=True, wait_for_termination=True,
        healthcheck_port=9000, healthcheck_host="0.0.0.0", healthcheck_timeout="2h", worker_timeout="10m",
        heartbeat_interval=60, delete_completed_jobs=True, delete_failed_jobs=True, delete_discarded_jobs=True,
        quiet=True, max_blocking_time="2s", metrics=False, blocking_timeout="10m", max_job_rescues=5,
    )
    assert config.worker_options() == {
        "identifier": "w1", "queues": ["mail"], "min_priority": 1, "max_priority": 100, "enable_listener": False,
        "min_threads": 2, "max_threads": 50, "max_thread_idletime": 120, "polling_interval": 10,
        "polling_jitter": 0.2, "set_db_connection_name": True, "wait_for_termination": True,
        "healthcheck_port": 9000, "healthcheck_host": "0.0.0.0", "healthcheck_timeout": 120,
        "worker_timeout": 600, "heartbeat_interval": 60, "delete_completed_jobs": True,
        "delete_failed_jobs": True, "delete_discarded_jobs": True, "quiet": True, "max_blocking_time": 2,
        "metrics": False, "blocking_timeout": 600, "max_job_rescues": 5,
    }


# --- documentation ------------------------------------------------------------------------------------------------


def test_heartbeat_interval_follows_worker_timeout_unless_it_is_set():
    config.configure(worker_timeout=10)
    assert config.get("heartbeat_interval") == 2.0
    assert config.worker_options()["heartbeat_interval"] == 2.0
    config.reset()
    assert config.get("heartbeat_interval") == 12.0  # worker_timeout 60: a fifth
    config.configure(worker_timeout=300)
    assert config.get("heartbeat_interval") == 30.0  # a fifth is 60, capped at 30
    config.configure(heartbeat_interval=6)
    with pytest.raises(ConfigError, match="heartbeat_interval .* must be less than half"):
        config.configure(worker_timeout=10)


def test_docs_table_matches_options():
    docs = pathlib.Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert config.reference_table() in docs.read_text()
