import subprocess
import sys

CHILD = r"""
import os, sys
from vid2scene import progress
with progress.quiet_native_info_logs():
    os.write(2, b"I20261201 12:00:25.155986 140512240077696 bundle_adjustment.cc:46] === Global bundle adjustment ===\n")
    os.write(2, b"E20261201 12:00:25.2 1405 mapper.cc:10] a native error stays\n")
    print("python text stays", file=sys.stderr)
    os.write(2, b"I20261201 12:00:28.935930 140512240077696 timer.cc:90] Elapsed time: 0.063 [minutes]\n")
os.write(2, b"after the block\n")
"""


def test_native_info_lines_are_dropped_and_the_rest_is_kept():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert "bundle_adjustment.cc" not in out.stderr and "timer.cc" not in out.stderr
    assert lines == ["E20261201 12:00:25.2 1405 mapper.cc:10] a native error stays", "python text stays",
                     "after the block"]
