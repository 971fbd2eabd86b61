import os

import pytest


def test_vllm_available():
    """Reports, as a skip, that the connector tests did not run where vLLM is missing; where the Makefile names
    the release it meant to test (SPLITZIP_VLLM_VERSION), that it is the one imported."""
    vllm = pytest.importorskip("vllm", reason="vLLM not installed: make vllm-test installs it and runs these tests")
    want = os.environ.get("SPLITZIP_VLLM_VERSION")
    if want:
        assert vllm.__version__ == want, f"imported vLLM {vllm.__version__} from {vllm.__file__}, not {want}"
