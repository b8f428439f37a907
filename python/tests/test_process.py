"""What a Python process relies on: the GIL is free while aiq works,
Ctrl-C raises KeyboardInterrupt after journaling the calls in flight, and
a forked child (PySpark's workers) can run jobs after its parent did."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pyarrow as pa

import aiq


def test_other_threads_run_while_aiq_works():
    # Sequential slow calls: a thread that reads the simulator's counter
    # (which needs the GIL) sees it part-way, while aiq.run is still inside.
    rows = 5
    table = pa.table({"text": [f"t{i}" for i in range(rows)]})
    seen = []
    done = threading.Event()
    with aiq.Simulator(latency_ms=200) as sim:

        def watch():
            while not done.is_set():
                seen.append(sim.stats()["requests"])

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            aiq.run(table, endpoint=sim.url, model="m", prompt="{{text}}", concurrency=1, quiet=True)
        finally:
            done.set()
            watcher.join()
    assert any(0 < n < rows for n in seen), f"never saw the run part-way: {sorted(set(seen))}"


CHILD = textwrap.dedent(
    """
    import sys, threading, time
    import pyarrow as pa
    import aiq

    table = pa.table({"text": [f"t{i}" for i in range(400)]})
    with aiq.Simulator(latency_ms=300, port=int(sys.argv[1])) as sim:
        def announce():
            while sim.stats()["requests"] < 4:
                time.sleep(0.01)
            print("in flight", flush=True)
        threading.Thread(target=announce, daemon=True).start()
        try:
            aiq.run(table, endpoint=sim.url, model="m", prompt="{{text}}",
                    concurrency=4, output="out.parquet", quiet=True)
            print("finished", flush=True)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", sim.stats()["requests"], flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_raises_keyboard_interrupt_and_journals_calls_in_flight(tmp_path):
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "in flight"
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    word, sent = out.split()
    assert word == "KeyboardInterrupt"
    journal = (tmp_path / "out.parquet.aiq" / "journal.jsonl").read_text().splitlines()
    # Every request the server got has its outcome in the journal: nothing
    # paid for is lost, and a rerun resumes past them.
    assert len(journal) == int(sent) > 0
    assert not (tmp_path / "out.parquet").exists()
    # The same call again (the same server address: it is part of the job)
    # resumes past every journaled row.
    with aiq.Simulator(port=port) as sim:
        summary = aiq.run(
            pa.table({"text": [f"t{i}" for i in range(400)]}),
            endpoint=sim.url,
            model="m",
            prompt="{{text}}",
            concurrency=4,
            output=tmp_path / "out.parquet",
            quiet=True,
        )
    assert summary["resumed"] >= len(journal)
    assert summary["rows"] == 400


def test_a_forked_child_runs_jobs(reviews):
    settings = dict(endpoint="simulator", prompt="{{text}}", quiet=True)
    assert aiq.run(reviews, **settings).num_rows == reviews.num_rows  # the parent's runtime exists now
    pid = os.fork()
    if pid == 0:
        # The child: tokio's threads did not come along; a hang is a failure.
        signal.alarm(60)
        try:
            ok = aiq.run(reviews, **settings).num_rows == reviews.num_rows
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    # And the parent's runtime still works.
    assert aiq.run(reviews, **settings).num_rows == reviews.num_rows


def test_nothing_starts_at_import():
    code = "import threading, aiq; print(threading.active_count(), len(os.listdir('/proc/self/task')))"
    out = subprocess.run(
        [sys.executable, "-c", "import os; " + code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["1", "1"], out
