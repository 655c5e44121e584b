"""The benchmark suite's pure helpers (the benchmarks themselves are not tests: `python -m benchmarks`)."""
from benchmarks.startup import parse_importtime

# `python -X importtime` prints a module after what it imported, nested two spaces deeper per level.
SAMPLE = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |   _io
import time:       200 |        300 | encodings
import time:      1000 |       1000 |     yaml.reader
import time:       500 |       1500 |   yaml
import time:       300 |       1800 | exekutor.cli
2026-12-06 14:00:00 ERROR [42] exekutor: a log line in the same stream
"""


def test_importtime_sums_every_modules_own_time_and_ranks_the_top_level():
    total_ms, count, top, names = parse_importtime(SAMPLE)
    assert total_ms == 2.1
    assert count == 5
    assert list(top) == ["exekutor.cli", "encodings"]  # only what the program imported itself, biggest first
    assert top["exekutor.cli"] == 1.8
    assert {"yaml", "yaml.reader", "_io"} <= names


def test_importtime_of_nothing_is_zero():
    assert parse_importtime("no import lines here\n") == (0.0, 0, {}, set())
