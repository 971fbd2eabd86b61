"""The vLLM connector tests need vLLM (make vllm-test installs the pinned release in its own venv); elsewhere
only test_vllm_available.py is collected, and it reports the skip."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("vllm") is None:
    collect_ignore = ["test_connector.py", "test_models.py", "test_staging.py", "harness.py"]
else:
    from .harness import engines, model_config, model_config_hybrid, model_config_mla, model_config_tp2  # noqa: F401  (fixtures)
