"""No interruption may cost exekutor's connection pools a slot or a connection (issue 24).

Under gevent an exception can land wherever a greenlet switches: in the wait for a slot, in a connect, in the
rollback after a failure, in the cancel of an interrupted statement, in giving the slot back. A patched process
(tests/pool_stress.py) storms each kind of pool (`default_pool()`, one that is not autocommit, a worker's own
through `Worker.db()` with a tiny statement_timeout) with JobCancelled, gevent.Timeout, GreenletExit,
KeyboardInterrupt, ValueError and a BaseException of nobody's, thrown into greenlets at random moments; Hypothesis
picks the pool, its size, the crowd and the mix. Afterwards every slot must be free and no more than that, the pool
must count as open exactly its idle connections, and the server must see those connections and nothing running.
"""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, query, wait_for

APPLICATION_NAME = "exekutor pool stress"  # the default pool's connections, which have no name of their own
KINDS = ["cancelled", "timeout", "exit", "keyboard", "value", "base"]


class StressProcess:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.pool_stress"], cwd=ROOT, text=True,
                                     env=dict(os.environ, PGAPPNAME=APPLICATION_NAME),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.count = 0

    def run(self, spec):
        self.count += 1
        spec = dict(spec, name=f"pool-stress-{self.count}")
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the stress process died (exit status {self.proc.poll()}); its stderr is above"
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def stress(database_url):
    process = StressProcess()
    yield process
    process.close()


scenarios = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32),
    "path": st.sampled_from(["default", "transactional", "worker"]),
    "size": st.integers(1, 4),
    "greenlets": st.integers(10, 60),
    "max_sleep_ms": st.floats(0.5, 10),
    "error_rate": st.sampled_from([0, 0.1, 0.3]),
    "kill_interval_ms": st.floats(0.2, 4),
    "kinds": st.lists(st.sampled_from(KINDS), min_size=1, unique=True),
    "statement_timeout": st.sampled_from([0.002, 0.01, 0.05]),
    "steps": st.just(400),  # about half a second; 20 examples in the ci profile
    "max_seconds": st.just(5),  # only a loaded machine gets there
})


@pytest.mark.timeout(300)
@settings(phases=[Phase.explicit, Phase.reuse, Phase.generate])  # timing decides a failure: shrinking cannot help
@given(spec=scenarios)
def test_no_interruption_costs_a_slot_or_a_connection(stress, db, spec):
    result = stress.run(spec)
    assert result["unexpected_count"] == 0, "\n".join(result["unexpected"])
    assert (result["stuck"], result["died"]) == (0, 0)
    assert result["steps"] >= 100 and result["throws"] > 0
    assert result["permits_back"], f"a slot of the pool of {result['size']} was lost: {result}"
    assert not result["extra_permit"], f"the pool of {result['size']} gives out one slot too many: {result}"
    assert result["open"] == result["idle"] <= result["size"], f"a connection neither idle nor closed: {result}"

    def server_settled():
        rows = query(db, "SELECT state FROM pg_stat_activity WHERE datname = current_database() "
                         "AND application_name = %s", (result["application_name"],))
        return len(rows) == result["open"] and all(state != "active" for state, in rows)

    wait_for(server_settled, timeout=15, message=f"the server to show only the pool's idle connections ({result})")
