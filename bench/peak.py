"""Run a module as __main__ and print its own peak RSS (VmHWM) at exit.

wait4's ru_maxrss is no use here: a child forked from a big benchmark process inherits that
process's high-water mark; VmHWM restarts at exec.
"""

import atexit
import runpy
import sys

from bench.common import rss_peak_mb


@atexit.register
def _report() -> None:
    sys.stdout.write(f"\nPEAK_RSS_MB={rss_peak_mb():.1f}\n")
    sys.stdout.flush()


sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
