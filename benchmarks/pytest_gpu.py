"""Runs pytest on a lent GPU machine (its image has no pytest command; the bundle carries the package):
    bash benchmarks/gpu_run.sh NAME benchmarks/pytest_gpu.py [pytest arguments...]"""
import sys

import pytest

sys.exit(pytest.main(sys.argv[1:]))
