"""Leases: distinct GPUs and disjoint (or serialised) CPUs for concurrent cells, freed on SIGKILL, a
clear error on timeout; a cell that dies with the Snakemake that started it."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tokencarbon.errors import ConfigError, HardwareMismatchError, TokencarbonError
from tokencarbon.lease import (
    LeaseTimeoutError,
    _nvml_uuids,
    _parse_visible,
    apply,
    cell_leases,
    cuda_device_nvml_index,
    default_lock_dir,
    lease_cpus,
    lease_gpu,
    supervisor_chain,
    visible_gpu_indices,
)

NVML = _nvml_uuids() is not None
no_nvml = pytest.mark.skipif(NVML, reason="fake GPU counts apply only where NVML is absent")


@pytest.fixture
def view(monkeypatch):
    """A clean GPU view of the environment, restored after the test (apply() changes it)."""
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "TOKENCARBON_FAKE_GPUS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def run_child(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


def test_two_leases_in_one_process_get_different_devices(tmp_path):
    first = lease_gpu(tmp_path, devices=[0, 1], cell="a", timeout_s=0)
    second = lease_gpu(tmp_path, devices=[0, 1], cell="b", timeout_s=0)
    assert (first.index, second.index) == (0, 1)  # devices are tried in order, first free wins
    holder = json.loads((tmp_path / "gpu0.lock").read_text())
    assert holder["pid"] == os.getpid() and holder["cell"] == "a"
    first.release()
    assert not first.held and (tmp_path / "gpu0.lock").read_text() == ""  # no stale holder line
    with lease_gpu(tmp_path, devices=[0, 1], cell="c", timeout_s=0) as third:
        assert third.index == 0  # the released device is the free one
    second.release()


def test_lease_of_a_sigkilled_process_is_free_at_once(tmp_path):
    child = run_child(
        """
        import sys, time
        from tokencarbon.lease import lease_gpu
        lease = lease_gpu(sys.argv[1], devices=[0], cell="victim", timeout_s=0)
        print(lease.index, flush=True)
        time.sleep(60)
        """,
        str(tmp_path),
    )
    try:
        assert child.stdout.readline().strip() == "0"
        with pytest.raises(LeaseTimeoutError, match=rf'"pid": {child.pid}, "cell": "victim"'):
            lease_gpu(tmp_path, devices=[0], timeout_s=0)
    finally:
        child.kill()  # SIGKILL: the child runs no cleanup of its own
        child.wait()
    with lease_gpu(tmp_path, devices=[0], timeout_s=0) as lease:  # timeout 0: no wait allowed
        assert lease.index == 0


def test_release_frees_the_device_while_a_forked_child_lives(tmp_path):
    # A fork shares the locked open file (dataloader or compile workers do this); release must
    # still free the device, or the next cell would wait for the worker to exit.
    lease = lease_gpu(tmp_path, devices=[0], timeout_s=0)
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    try:
        lease.release()
        with lease_gpu(tmp_path, devices=[0], timeout_s=0) as again:
            assert again.index == 0
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_all_devices_held_waits_then_names_dir_and_holders(tmp_path):
    held = [lease_gpu(tmp_path, devices=[0, 1], cell=f"cell{i}", timeout_s=0) for i in range(2)]
    start = time.monotonic()
    with pytest.raises(LeaseTimeoutError) as caught:
        lease_gpu(tmp_path, devices=[0, 1], cell="third", timeout_s=0.3, poll_s=0.05)
    waited_s = time.monotonic() - start
    assert 0.3 <= waited_s < 5  # waited the whole timeout, then gave up
    message = str(caught.value)
    assert str(tmp_path) in message and "after waiting 0.3 s" in message
    for name, cell in (("gpu0.lock", "cell0"), ("gpu1.lock", "cell1")):
        assert f'{name} held by {{"pid": {os.getpid()}, "cell": "{cell}"' in message
    assert "N <= 2" in message
    for lease in held:
        lease.release()


def test_concurrent_processes_never_share_a_device(tmp_path):
    # 4 processes, 2 devices, each lease held 0.5 s; all start together behind a stdin barrier.
    code = """
        import json, sys, time
        from tokencarbon.lease import lease_gpu
        print("ready", flush=True)
        sys.stdin.readline()
        lease = lease_gpu(sys.argv[1], devices=[0, 1], cell=sys.argv[2], timeout_s=30, poll_s=0.01)
        with lease:
            start_ns = time.monotonic_ns()  # CLOCK_MONOTONIC is one clock for all processes
            time.sleep(0.5)
            end_ns = time.monotonic_ns()
        print(json.dumps([lease.index, start_ns, end_ns]), flush=True)
        """
    children = [run_child(code, str(tmp_path), f"cell{i}") for i in range(4)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    intervals = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        intervals.append(json.loads(out))
    assert {index for index, _, _ in intervals} <= {0, 1}
    for device in (0, 1):
        spans = sorted((s, e) for index, s, e in intervals if index == device)
        for (_, prev_end), (next_start, _) in zip(spans, spans[1:]):
            assert next_start >= prev_end  # no two holders of one device at the same time
    # 4 holds of 0.5 s on 2 devices without overlap take at least 4 x 0.5 / 2 = 1.0 s.
    span_s = (max(e for _, _, e in intervals) - min(s for _, s, _ in intervals)) / 1e9
    assert span_s >= 1.0


@no_nvml
def test_cuda_visible_devices_2_5_leases_physical_2_and_5(tmp_path, view):
    view.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpu_indices() == [2, 5]
    a = lease_gpu(tmp_path, timeout_s=0)
    b = lease_gpu(tmp_path, timeout_s=0)
    assert (a.index, b.index) == (2, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu2.lock", "gpu5.lock"]
    assert apply(b) == {"gpu_index": 5, "gpu_uuid": None}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # CUDA counts "5" as NVML does
    a.release()
    b.release()
    with pytest.raises(TokencarbonError, match="was released"):
        apply(b)


@no_nvml
def test_visible_gpu_indices_from_the_environment(view):
    assert visible_gpu_indices() == []  # no scheduler, no NVML, no fake GPUs
    view.setenv("TOKENCARBON_FAKE_GPUS", "3")
    assert visible_gpu_indices() == [0, 1, 2]
    # A scheduler's CUDA_VISIBLE_DEVICES wins over the fake count.
    view.setenv("CUDA_VISIBLE_DEVICES", "1,-1,3")
    assert visible_gpu_indices() == [1]  # CUDA ignores "-1" and every entry after it
    view.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_indices() == []  # an empty value hides every GPU
    view.setenv("CUDA_VISIBLE_DEVICES", "GPU-8a1b")
    with pytest.raises(HardwareMismatchError, match="'GPU-8a1b' names no single GPU.*NVML"):
        visible_gpu_indices()
    view.delenv("CUDA_VISIBLE_DEVICES")
    view.setenv("TOKENCARBON_FAKE_GPUS", "two")
    with pytest.raises(ConfigError, match="TOKENCARBON_FAKE_GPUS='two'.*whole number"):
        visible_gpu_indices()


def test_uuid_entries_map_to_nvml_indices():
    uuids = ["GPU-0f1e-aa", "GPU-7c2d-bb", "GPU-7c2e-cc"]  # three GPUs as NVML would list them
    assert _parse_visible("GPU-7c2d,0", uuids) == [1, 0]  # a unique UUID prefix, then an index
    with pytest.raises(HardwareMismatchError, match="'GPU-7c2' names no single GPU"):
        _parse_visible("GPU-7c2", uuids)  # prefix of two UUIDs
    with pytest.raises(HardwareMismatchError, match=r"'3' names no single GPU; .* 0\.\.2"):
        _parse_visible("3", uuids)  # indices run 0..2


@no_nvml
def test_no_gpu_to_lease_names_the_view(tmp_path, view):
    with pytest.raises(HardwareMismatchError, match="no GPU to lease.*NVML is absent"):
        lease_gpu(tmp_path, timeout_s=0)


def test_unusable_lock_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"GPU lock directory {blocker}/locks"):
        lease_gpu(blocker / "locks", devices=[0], timeout_s=0)


def test_apply_refuses_once_cuda_is_initialised(tmp_path, view):
    torch = pytest.importorskip("torch")
    # No GPU here can initialise CUDA, so the guard's one input is set by hand.
    view.setattr(torch.cuda, "is_initialized", lambda: True)
    with lease_gpu(tmp_path, devices=[0], timeout_s=0) as lease:
        with pytest.raises(TokencarbonError, match="CUDA is already initialised"):
            apply(lease)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # nothing half-applied


@pytest.mark.gpu
@pytest.mark.skipif(not NVML, reason="no NVIDIA GPU and driver")
def test_applied_lease_is_cuda_device_0_and_nvml_device_0(tmp_path, view):
    # In a fresh process: CUDA reads CUDA_VISIBLE_DEVICES once, at initialisation.
    child = run_child(
        """
        import json, sys
        from tokencarbon.lease import apply, lease_gpu
        lease = lease_gpu(sys.argv[1], devices=[int(sys.argv[2])], timeout_s=0)
        gpu = apply(lease)
        import torch
        from tokencarbon.power.nvml import describe_gpu
        props = torch.cuda.get_device_properties(0)
        nvml_uuid = describe_gpu(0)["uuid"]  # what the power sidecar's NVML source reads
        print(json.dumps([gpu, torch.cuda.device_count(), str(props.uuid), nvml_uuid]))
        try:
            apply(lease)
        except Exception as exc:
            print(type(exc).__name__)
        """,
        str(tmp_path),
        str(len(_nvml_uuids()) - 1),  # the last GPU, so a mapping that ignored the lease fails
    )
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0
    line, error = out.strip().splitlines()
    gpu, cuda_count, cuda_uuid, nvml_uuid = json.loads(line)
    last = len(_nvml_uuids()) - 1
    assert gpu["gpu_index"] == last and gpu["gpu_uuid"] == _nvml_uuids()[last]
    assert cuda_count == 1 and nvml_uuid == gpu["gpu_uuid"]
    assert gpu["gpu_uuid"].endswith(cuda_uuid)  # torch prints the UUID without "GPU-"
    assert error == "TokencarbonError"  # CUDA was initialised by then


def test_cuda_device_maps_through_the_one_parser(view):
    uuids = ["GPU-0f1e-aa", "GPU-7c2d-bb", "GPU-7c2e-cc"]
    assert cuda_device_nvml_index(1, uuids) == 1  # no CUDA_VISIBLE_DEVICES: NVML's own order
    view.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-0f1e")
    assert [cuda_device_nvml_index(i, uuids) for i in (0, 1)] == [2, 0]
    with pytest.raises(HardwareMismatchError, match=r"device_index=2 does not exist.*\[2, 0\]"):
        cuda_device_nvml_index(2, uuids)
    view.setenv("CUDA_VISIBLE_DEVICES", "64")
    with pytest.raises(HardwareMismatchError, match="'64' in CUDA_VISIBLE_DEVICES='64'"):
        cuda_device_nvml_index(0, uuids)


def test_nothing_else_parses_cuda_visible_devices():
    # lease.py is the one parser; everything else may only read or set the variable whole.
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "workflow" / "tokencarbon"
    for path in package.rglob("*.py"):
        if path.name == "lease.py":
            continue
        for line in path.read_text().splitlines():
            if "CUDA_VISIBLE_DEVICES" in line:
                assert ".split" not in line and "isdigit" not in line, f"{path}: {line.strip()}"


def test_default_lock_dir_is_per_user_or_the_override(view):
    view.delenv("TOKENCARBON_LEASE_DIR", raising=False)
    assert str(default_lock_dir()) == f"/tmp/tokencarbon-leases-{os.getuid()}"
    view.setenv("TOKENCARBON_LEASE_DIR", "/somewhere/else")
    assert str(default_lock_dir()) == "/somewhere/else"


# ---------------------------------------------------------------- CPU leases


def test_two_cpu_leases_take_disjoint_cpus_where_enough_are_allowed(tmp_path):
    # 4 allowed CPUs, two cells of 2: the first takes the lowest two, the second the next two.
    with lease_cpus(tmp_path, 2, cell="a", allowed=[0, 1, 2, 3], timeout_s=0) as a:
        with lease_cpus(tmp_path, 2, cell="b", allowed=[0, 1, 2, 3], timeout_s=0) as b:
            assert (a.cpus, b.cpus) == ((0, 1), (2, 3))
            holder = json.loads((tmp_path / "cpu2.lock").read_text())
            assert holder["cell"] == "b" and holder["pid"] == os.getpid()
            assert a.record() == {"cpus": [0, 1]}
    assert not a.held and not b.held


def test_cpu_lease_waits_for_a_holder_then_names_it(tmp_path):
    held = lease_cpus(tmp_path, 1, cell="orphan", allowed=[0, 1], timeout_s=0)
    start = time.monotonic()
    with pytest.raises(LeaseTimeoutError) as caught:
        lease_cpus(tmp_path, 2, cell="rerun", allowed=[0, 1], timeout_s=0.3, poll_s=0.05)
    assert 0.3 <= time.monotonic() - start < 5
    message = str(caught.value)
    assert "fewer than 2 of the logical CPUs [0, 1] free after waiting 0.3 s" in message
    assert f'cpu0.lock held by {{"pid": {os.getpid()}, "cell": "orphan"' in message
    assert "end it by its pid" in message
    # The failed attempt left nothing held: the free CPU is still free.
    with lease_cpus(tmp_path, 1, allowed=[0, 1], timeout_s=0) as other:
        assert other.cpus == (1,)
    held.release()


def test_cpu_lease_needs_enough_allowed_cpus(tmp_path):
    with pytest.raises(HardwareMismatchError, match=r"describes 3 logical CPUs .* only 2: \[0, 1\]"):
        lease_cpus(tmp_path, 3, allowed=[0, 1], timeout_s=0)
    with pytest.raises(ConfigError, match="n=0 logical CPUs"):
        lease_cpus(tmp_path, 0, allowed=[0, 1], timeout_s=0)


def test_cpu_lease_of_a_sigkilled_orphan_frees_at_once(tmp_path):
    child = run_child(
        """
        import sys, time
        from tokencarbon.lease import lease_cpus
        lease = lease_cpus(sys.argv[1], 2, cell="orphan", allowed=[0, 1], timeout_s=0)
        print(lease.cpus, flush=True)
        time.sleep(60)
        """,
        str(tmp_path),
    )
    try:
        assert child.stdout.readline().strip() == "(0, 1)"
        with pytest.raises(LeaseTimeoutError, match=rf'"pid": {child.pid}, "cell": "orphan"'):
            lease_cpus(tmp_path, 1, allowed=[0, 1], timeout_s=0)
    finally:
        child.kill()
        child.wait()
    with lease_cpus(tmp_path, 2, allowed=[0, 1], timeout_s=0) as lease:
        assert lease.cpus == (0, 1)


def test_concurrent_cpu_cells_of_two_cpus_on_two_never_overlap(tmp_path):
    # The --cores 2 case: 3 cells each needing both CPUs of a 2-CPU machine run one at a time.
    code = """
        import json, sys, time
        from tokencarbon.lease import lease_cpus
        print("ready", flush=True)
        sys.stdin.readline()
        with lease_cpus(sys.argv[1], 2, cell=sys.argv[2], allowed=[0, 1], timeout_s=30, poll_s=0.01) as lease:
            start_ns = time.monotonic_ns()
            time.sleep(0.4)
            end_ns = time.monotonic_ns()
        print(json.dumps([list(lease.cpus), start_ns, end_ns]), flush=True)
        """
    children = [run_child(code, str(tmp_path), f"cell{i}") for i in range(3)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    spans = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        spans.append(json.loads(out))
    assert all(cpus == [0, 1] for cpus, _, _ in spans)
    ordered = sorted((s, e) for _, s, e in spans)
    for (_, prev_end), (next_start, _) in zip(ordered, ordered[1:]):
        assert next_start >= prev_end  # one holder of the CPUs at a time
    # 3 holds of 0.4 s one after another take at least 1.2 s.
    assert (ordered[-1][1] - ordered[0][0]) / 1e9 >= 1.2


def test_cell_lease_pins_every_thread_to_the_leased_cpus(tmp_path):
    # In a child: pinning changes the process. A thread started BEFORE the lease must move too.
    child = run_child(
        """
        import json, os, sys, threading, time
        from tokencarbon.lease import cell_leases
        early = threading.Thread(target=time.sleep, args=(5,), daemon=True)
        early.start()
        platform = {"name": "cpu", "kind": "cpu", "logical_cpus": 1}
        before = sorted(os.sched_getaffinity(0))
        with cell_leases(platform, cell="c", lock_dir=sys.argv[1], timeout_s=0) as record:
            tasks = {}
            for task in os.listdir("/proc/self/task"):
                tasks[task] = sorted(os.sched_getaffinity(int(task)))
        after = sorted(os.sched_getaffinity(early.native_id))
        print(json.dumps([record, tasks, early.native_id, before == after]), flush=True)
        """,
        str(tmp_path),
    )
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    record, tasks, early_tid, restored = json.loads(out)
    first = min(os.sched_getaffinity(0))  # the lowest CPU this test may use
    assert record == {"cpus": [first]}
    assert str(early_tid) in tasks and all(cpus == [first] for cpus in tasks.values())
    assert restored  # after the block, every thread runs where it ran before


# ---------------------------------------------------------------- dying with the supervisor


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_supervisor_chain_skips_a_shell_between(tmp_path):
    # python (this test) -> bash -> python: the chain is [bash, this process]. Snakemake 9's
    # `bash -c "set -euo pipefail; python script"` execs python in bash 5.2, but older shells, a
    # conda activation or a wrapper prefix leave a shell between; "; exit $?" keeps one here.
    out = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; {sys.executable} -c '"
         "from tokencarbon.lease import supervisor_chain; "
         "print([p.name() for p in supervisor_chain()], supervisor_chain()[-1].pid)'; exit $?"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert out[-1] == str(os.getpid())
    assert "bash" in out[0]


def test_a_cell_dies_when_its_supervisor_is_sigkilled(tmp_path):
    # supervisor (python) -> bash -> cell (python). SIGKILL the supervisor only: the bash between
    # them lives on, so neither PR_SET_PDEATHSIG nor a pipe would reach the cell; its watch does.
    cell_code = (
        "import os, sys, time\n"
        "from tokencarbon.lease import die_with_supervisor\n"
        "watched = die_with_supervisor()\n"
        "open(sys.argv[1], 'w').write(' '.join(map(str, [os.getpid(), *watched])))\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "cell.py").write_text(cell_code)
    pid_file = tmp_path / "pids"
    supervisor = run_child(
        """
        import subprocess, sys
        subprocess.run(["bash", "-c", f"{sys.executable} {sys.argv[1]} {sys.argv[2]}; exit $?"])
        """,
        str(tmp_path / "cell.py"),
        str(pid_file),
    )
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline and supervisor.poll() is None
        time.sleep(0.05)
    cell_pid, bash_pid, watched_supervisor = map(int, pid_file.read_text().split())
    assert watched_supervisor == supervisor.pid and _alive(cell_pid) and _alive(bash_pid)
    supervisor.kill()  # SIGKILL: no cleanup, no signal to its children
    supervisor.wait()
    deadline = time.monotonic() + 10
    while _alive(cell_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(cell_pid), "the cell outlived its SIGKILLed supervisor"


def test_supervisor_chain_of_a_direct_child_is_its_parent():
    out = subprocess.run(
        [sys.executable, "-c", "from tokencarbon.lease import supervisor_chain; "
         "print([p.pid for p in supervisor_chain()])"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out) == [os.getpid()]
