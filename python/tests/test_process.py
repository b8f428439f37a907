"""What a Python process relies on: the GIL is free while aiq works,
Ctrl-C raises KeyboardInterrupt (after journaling the calls in flight with
output=), a forked child (PySpark's workers) can run jobs after its parent
did, input is streamed, the progress bar shows only on a terminal, and the
Simulator context manager stops serving."""

import gc
import os
import pty
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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


def interrupted(code: str, port: int, cwd) -> int:
    """Run `code` (CHILD or a variant) in a child, press Ctrl-C once calls
    are in flight; check it raised KeyboardInterrupt and return how many
    requests its server had received."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(port)],
        cwd=cwd,
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
    return int(sent)


def test_ctrl_c_raises_keyboard_interrupt_and_journals_calls_in_flight(tmp_path):
    port = free_port()
    sent = interrupted(CHILD, port, tmp_path)
    journal = (tmp_path / "out.parquet.aiq" / "journal.jsonl").read_text().splitlines()
    # Every request the server got has its outcome in the journal: nothing
    # paid for is lost, and a rerun resumes past them.
    assert len(journal) == sent > 0
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


def aiq_threads() -> list[str]:
    """This process's threads that aiq's runtime started (named "aiq")."""
    tasks = "/proc/self/task"
    names = []
    for t in os.listdir(tasks):
        try:
            with open(f"{tasks}/{t}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return [n for n in names if n.startswith("aiq")]


def test_forked_children_run_jobs(reviews):
    settings = dict(endpoint="simulator", prompt="{{text}}", quiet=True)
    assert aiq.run(reviews, **settings).num_rows == reviews.num_rows
    gc.collect()  # no finished job of an earlier test still holds the runtime
    assert aiq_threads(), "the parent's runtime exists now"
    # Several children: a thread of the parent caught mid-lock at the
    # instant of a fork hangs or crashes only some of them.
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            # The child: a hang is a failure.
            signal.alarm(60)
            try:
                ok = aiq.run(reviews, **settings).num_rows == reviews.num_rows
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        # The idle runtime was stopped before the fork: no aiq thread
        # existed to be caught mid-lock.
        assert not aiq_threads()
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        # And the parent goes on with a new runtime.
        assert aiq.run(reviews, **settings).num_rows == reviews.num_rows


def test_nothing_starts_at_import():
    code = "import threading, aiq; print(threading.active_count(), len(os.listdir('/proc/self/task')))"
    out = subprocess.run(
        [sys.executable, "-c", "import os; " + code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["1", "1"], out


def test_ctrl_c_without_output_raises_keyboard_interrupt(tmp_path):
    # Iterating the result (no output=): a second code path, which stops at
    # once since there is no journal to wait for.
    child_code = CHILD.replace('output="out.parquet", ', "")
    assert child_code != CHILD
    assert 0 < interrupted(child_code, free_port(), tmp_path) < 400
    assert not (tmp_path / "out.parquet.aiq").exists()


def test_a_reader_is_streamed_not_loaded_with_output():
    # Input that is never whole in memory: a generator of batches. When
    # each batch is produced, the rows read so far are at most a bounded
    # window ahead of the rows sent; a run that first loaded everything
    # would read all 6,000 rows before sending one.
    rows, size = 6000, 20
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    ahead = []
    with aiq.Simulator() as sim:

        def batches():
            for start in range(0, rows, size):
                ahead.append(start - sim.stats()["requests"])
                ids = list(range(start, start + size))
                yield pa.record_batch([ids, [f"t{i}" for i in ids]], schema=schema)

        reader = pa.RecordBatchReader.from_batches(schema, batches())
        summary = aiq.run(
            reader, endpoint=sim.url, model="m", prompt="{{text}}",
            concurrency=4, batch_rows=size, output="out.parquet", quiet=True,
        )
    assert summary["rows"] == rows and summary["ok"] == rows
    assert max(ahead) < 20 * size, max(ahead)
    out = pq.read_table("out.parquet", columns=["id"])
    assert out["id"].to_pylist() == list(range(rows))


PROGRESS = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    import aiq

    table = pa.table({"text": [f"t{i}" for i in range(40)]})
    with aiq.Simulator(latency_ms=100) as sim:
        aiq.run(table, endpoint=sim.url, model="m", prompt="{{text}}",
                concurrency=4, quiet=sys.argv[1] == "quiet")
    """
)


def stderr_of_progress(quiet: bool, terminal: bool) -> bytes:
    """What a run writes on stderr, when stderr is a terminal or a pipe."""
    args = [sys.executable, "-c", PROGRESS, "quiet" if quiet else "loud"]
    env = dict(os.environ, TERM="xterm")
    if not terminal:
        done = subprocess.run(args, capture_output=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr
    main, sub = pty.openpty()
    child = subprocess.Popen(args, stderr=sub, env=env)
    os.close(sub)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert child.wait(timeout=120) == 0, seen
    return seen


def test_progress_bar_only_on_a_terminal_and_not_when_quiet():
    on_terminal = stderr_of_progress(quiet=False, terminal=True)
    assert b"rows" in on_terminal and b"40" in on_terminal, on_terminal
    assert stderr_of_progress(quiet=True, terminal=True) == b""
    # Logs and Jupyter (stderr not a terminal): no bar, no cursor codes.
    piped = stderr_of_progress(quiet=False, terminal=False)
    assert b"\x1b" not in piped and b"\r" not in piped and b"rows/s" not in piped, piped


def test_simulator_context_manager_stops_serving():
    with aiq.Simulator() as sim:
        assert sim.url.startswith("http://127.0.0.1:") and sim.url.endswith("/v1")
        port = int(sim.url.rsplit(":", 1)[1].split("/")[0])
        out = aiq.run(pa.table({"text": ["a"]}), endpoint=sim.url, model="m", prompt="{{text}}", quiet=True)
        assert out["error_message"].null_count == 1
        assert sim.stats()["requests"] >= 1
    with pytest.raises(aiq.Error, match="closed"):
        sim.stats()
    # The listener goes away (polled: closing is asynchronous).
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "still accepting connections after close"
        time.sleep(0.05)
