"""helpers.preemption: the stop flag, exit codes, agreeing ranks, worker signals and the loading counter."""

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers.environment import repo_root
from helpers.preemption import (PREEMPTION_SIGNALS, CountingDataset, StopFlag, agree_on_signal, exit_code_for,
                                ignore_stop_signals)

posix_only = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="SIGUSR1 and process groups are POSIX-only")


def test_exit_code_is_128_plus_the_signal_and_0_without_one():
    assert exit_code_for(signal.SIGTERM) == 128 + signal.SIGTERM.value
    assert exit_code_for(None) == 0
    for bad in (0, 200, -1):
        with pytest.raises(ValueError, match="signal number"):
            exit_code_for(bad)


@posix_only
def test_stop_flag_records_the_first_signal_and_restores_the_previous_handlers():
    received = []

    def previous(number, frame):
        received.append(number)

    old = {s: signal.signal(s, previous) for s in PREEMPTION_SIGNALS}
    try:
        with StopFlag() as stop:
            assert not stop.requested and stop.signal is None and stop.signal_name is None
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and stop.signal == signal.SIGUSR1 and stop.count == 2
            assert stop.signal_name == "SIGUSR1"
        assert received == []  # the flag got them, not the previous handler
        assert all(signal.getsignal(s) is previous for s in PREEMPTION_SIGNALS)
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def test_stop_flag_refuses_a_thread_other_than_the_main_one():
    errors = []

    def install():
        try:
            StopFlag().install()
        except RuntimeError as error:
            errors.append(str(error))

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert errors and "main thread" in errors[0]
    with pytest.raises(ValueError, match="at least one signal"):
        StopFlag(signals=())


def test_agree_on_signal_without_distributed_returns_what_it_got():
    assert agree_on_signal(None) is None
    assert agree_on_signal(signal.SIGTERM) == int(signal.SIGTERM)


_CHILD = textwrap.dedent("""
    import sys, time, torch
    from torch.utils.data import DataLoader, TensorDataset
    from helpers.preemption import StopFlag, exit_code_for, ignore_stop_signals
    init = ignore_stop_signals if sys.argv[1] == "ignore" else None
    loader = DataLoader(TensorDataset(torch.arange(4000.0)), batch_size=4, num_workers=2, worker_init_fn=init)
    with StopFlag() as stop:
        try:
            for step, _ in enumerate(loader):
                print("step", step, flush=True)
                time.sleep(0.3)  # time for the death of a worker to be noticed before the flag is checked
                if stop.requested:
                    print("saved at", step, flush=True)
                    sys.exit(exit_code_for(stop.signal))
        except RuntimeError as error:
            print("crashed:", error, flush=True)
            sys.exit(1)
""")


def _signal_group(mode):
    """Run the child, SIGTERM its whole process group after step 3; return (exit code, output)."""
    process = subprocess.Popen([sys.executable, "-c", _CHILD, mode], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True, cwd=repo_root(),
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in process.stdout:
        if line.strip() == "step 3":
            os.killpg(process.pid, signal.SIGTERM)
            break
    output = process.stdout.read()
    process.wait(timeout=120)
    return process.returncode, output


@posix_only
def test_sigterm_to_the_process_group_stops_cleanly_only_when_workers_ignore_it():
    code, output = _signal_group("ignore")
    assert code == 143 and "saved at" in output, output
    code, output = _signal_group("default")
    assert code == 1 and "killed by signal" in output, output


def test_counting_dataset_counts_samples_loaded_in_workers():
    data = CountingDataset(TensorDataset(torch.arange(40.0)))
    assert len(data) == 40
    batches = list(DataLoader(data, batch_size=8, num_workers=2))
    assert len(batches) == 5 and data.loaded == 40
    data.reset()
    assert data.loaded == 0
    assert torch.equal(data[3][0], torch.tensor(3.0)) and data.loaded == 1


@posix_only
def test_ignore_stop_signals_ignores_both_signals():
    old = {s: signal.getsignal(s) for s in PREEMPTION_SIGNALS}
    try:
        ignore_stop_signals(0)
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in PREEMPTION_SIGNALS)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
