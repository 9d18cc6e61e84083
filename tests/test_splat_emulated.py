"""The CPU emulation of CUDA's execution model (kernels/csrc/emulate.h) and the checks
built on it (kernels.check): known values of its primitives, each misuse an error, the
kernel clean under the shadow race checker, AddressSanitizer and ThreadSanitizer, and
every injected fault caught (by the checker named here; `python -m kernels.check
--faults` prints the whole table)."""

import subprocess
from pathlib import Path

import pytest

from kernels import check
from kernels.build import CSRC

CASES_SOURCE = Path(__file__).resolve().parent / "emulate_cases.cpp"


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    binary = tmp_path_factory.mktemp("emulate") / "emulate_cases"
    subprocess.run([check.compiler(), "-std=c++20", "-O1", "-g", "-Wall", "-Werror",
                    "-Wno-unknown-pragmas", f"-I{CSRC}", str(CASES_SOURCE), "-o", str(binary)],
                   check=True, capture_output=True, text=True)

    def run(name, *options):
        proc = subprocess.run([str(binary), name, *options], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode in (0, 2), proc.stderr
        if proc.returncode == 2:
            return proc.stdout.strip()
        return [float(v) for v in proc.stdout.split()]

    return run


@pytest.mark.parametrize("mode", [(), ("--threads",)])
def test_warp_primitives_give_cuda_values(cases, mode):
    """__shfl_down_sync: lane i gets lane i+3's value, or its own past lane 31;
    __ballot_sync of lane % 3 == 0 is 0x49249249 in every lane; __popc of it is 11."""
    out = cases("warp_values", *mode)
    for t in range(64):
        lane = t % 32
        assert out[3 * t] == 1.5 * (lane + 3 if lane + 3 < 32 else lane)
        assert out[3 * t + 1] == 1.0 and out[3 * t + 2] == 11.0


@pytest.mark.parametrize("mode", [(), ("--threads",), ("--seed", "7")])
def test_barrier_orders_shared_memory_within_each_block(cases, mode):
    out = cases("barrier_values", *mode)
    assert out == [10.0 * ((t + 1) % 64) + b for b in range(2) for t in range(64)]


def test_shared_memory_starts_as_0xff_poison(cases):
    """Read without a write (checks off): NaN as float, -1 as int."""
    out = cases("poison", "--no-shared-check")
    assert all(v != v for v in out[0::2]) and all(v == -1.0 for v in out[1::2])


def test_blocks_run_in_a_seeded_shuffled_order(cases):
    orders = {seed: cases("block_order", "--seed", str(seed)) for seed in (0, 1)}
    for order in orders.values():
        assert sorted(order) == [float(k) for k in range(16)]
        assert order != sorted(order)
    assert orders[0] != orders[1]
    assert cases("block_order", "--seed", "1") == orders[1]


MISUSE = {
    # case: (what the error says, also checked with one OS thread per CUDA thread)
    "block_48": ("whole warps", True),
    "block_2d": ("only 1-D blocks", True),
    "grid_y_65536": ("grid limits", True),
    "exit_before_barrier": ("every thread must reach it", True),
    "lane_exits_before_shuffle": ("fewer than 32 live lanes", True),
    "partial_mask": ("only the full mask", True),
    "mixed_primitives": ("while other lanes of its warp wait in", True),
    "divergent_barrier": ("deadlock", False),  # threads: reported after a 60 s timeout
    "shared_too_big": ("past 49152 bytes", True),
    "race": ("race:", False),  # the shadow checks run with fibers; threads: TSan's job
    "uninitialised": ("which no thread of this block has written", False),
    "shared_out_of_bounds": ("out of bounds of shared s", True),
}


@pytest.mark.parametrize("case", list(MISUSE))
def test_misuse_is_a_clear_error_never_a_hang(cases, case):
    fragment, threads_too = MISUSE[case]
    for mode in [()] + ([("--threads",)] if threads_too else []):
        for seed in ("0", "3"):
            result = cases(case, *mode, "--seed", seed)
            assert isinstance(result, str) and result.startswith("error: "), (mode, result)
            assert fragment in result, (mode, result)


@pytest.mark.parametrize("checker", list(check.CHECKERS))
def test_kernel_passes_every_checker(checker):
    outcome = check.check(checker)
    assert outcome.status == 0, outcome.output[-3000:]


CAUGHT = [
    # (fault, checker, verdict, what its report says)
    ("barrier-before-pixels", "shadow", "emulation error", "shared s_"),
    ("barrier-before-pixels", "tsan", "sanitizer report", "ThreadSanitizer: data race"),
    ("barrier-after-counts", "shadow", "emulation error", "shared s_warp_count"),
    ("barrier-after-counts", "tsan", "sanitizer report", "ThreadSanitizer: data race"),
    ("box-short", "shadow", "numeric mismatch", "MISMATCH"),
    ("tile-bound-short", "shadow", "numeric mismatch", "MISMATCH"),
    ("warp-sum-half", "shadow", "numeric mismatch", "MISMATCH"),
    ("read-before-write", "shadow", "emulation error", "which no thread of this block has"),
    ("read-before-write", "ucontext", "emulation error", "which no thread of this block has"),
    ("write-out-of-bounds", "asan", "sanitizer report", "heap-buffer-overflow"),
]


def test_every_fault_has_a_catching_check_here():
    assert {fault for fault, *_ in CAUGHT} == set(check.FAULTS)


@pytest.mark.parametrize(("fault", "checker", "verdict", "report"), CAUGHT)
def test_injected_fault_is_caught(fault, checker, verdict, report):
    outcome = check.check(checker, fault)
    assert outcome.verdict == verdict, outcome.output[-3000:]
    assert report in outcome.first_report() or report in outcome.output, outcome.output[-3000:]


@pytest.mark.parametrize("edit", list(check.BENIGN))
def test_benign_edit_changes_no_result(edit):
    """The culling box's one pixel of slack: these edits must pass (no false alarm)."""
    outcome = check.check("shadow", edit)
    assert outcome.status == 0, outcome.output[-3000:]


def test_emulated_backend_refuses_float64():
    """The kernel takes fp32 / fp16 / bf16 features only; float64 is named, not cast."""
    import torch

    from kernels import splat

    B, N, C = 1, 3, 2
    args = (torch.zeros(B, N, 2), torch.ones(B, N, 2), torch.zeros(B, N),
            torch.zeros(B, N, C, dtype=torch.float64))
    with pytest.raises(ValueError, match="backend='emulated' needs CPU tensors with float32"):
        splat(*args, height=4, width=4, backend="emulated")
