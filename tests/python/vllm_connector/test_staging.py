"""The worker's staging estimate (the warning at registration) agrees with what a producer reserves: staging of
staging_needed(layout, tokens, block_size) saves a handoff of that many tokens in every mode, and a budget of
the raw bytes alone, with no room for frame headers, fails it at once."""

from __future__ import annotations

import numpy as np
import pytest

from splitzip_connector.errors import HandoffBusyError
from splitzip_connector.handoff import KVLayout, Producer
from splitzip_connector.vllm.worker import staging_needed, staging_tokens

LAYERS, BLOCKS, BS, HEADS, HEAD = 4, 8, 16, 3, 64


def host_cache() -> tuple[KVLayout, np.ndarray]:
    a = np.random.default_rng(0).integers(0x3C00, 0x3F00, size=(LAYERS, 2, BLOCKS, BS, HEADS, HEAD), dtype=np.uint16)
    bb = BS * HEADS * HEAD * 2
    return KVLayout(LAYERS, BS, HEADS, HEAD, "bf16", BLOCKS, block_stride=bb, kv_offset=BLOCKS * bb, model="m"), a


def test_estimates_round_trip():
    lay, _ = host_cache()
    for tokens in (16, 100, 128):
        assert staging_tokens(lay, staging_needed(lay, tokens, BS), BS) >= tokens
    assert staging_tokens(lay, staging_needed(lay, 128, BS) - 1, BS) < 128


@pytest.mark.parametrize("opts", [{"bypass": "always"}, {"bypass": "never", "mode": "fast"},
                                  {"bypass": "never", "mode": "high-ratio"}], ids=["raw", "fast", "high-ratio"])
def test_the_estimate_holds_a_handoff_and_raw_bytes_alone_do_not(plane, opts):
    lay, a = host_cache()
    tokens = BLOCKS * BS
    raw = LAYERS * 2 * BLOCKS * lay.block_bytes
    for budget, fits in ((staging_needed(lay, tokens, BS), True), (raw, False)):
        with Producer(plane, f"pre-{opts.get('mode', 'raw')}-{fits}", staging_bytes=budget, **opts) as prod:
            prod.register_host_cache(lay, [a[l].ctypes.data for l in range(LAYERS)], keep_alive=a)
            prod.begin("r", list(range(BLOCKS)))
            if fits:
                for layer in range(LAYERS):
                    prod.save_layer("r", layer)
                prod.wait_saved("r", timeout_s=10)
                continue
            with pytest.raises(HandoffBusyError, match="exceeds the whole staging budget"):
                prod.wait_saved("r", timeout_s=10)  # the save fails before its first layer comes
            with pytest.raises(HandoffBusyError, match="its save already failed"):
                prod.save_layer("r", 0)
