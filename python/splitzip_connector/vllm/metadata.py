"""What the scheduler tells the workers each step, and what travels to the decode engine in kv_transfer_params.

Plain dataclasses: the per-step SplitZipConnectorMetadata (scheduler → every TP worker) and the handoff
parameters (prefill engine → proxy → decode engine). The handoff parameters carry WIRE_VERSION and a
compatibility hash, both checked first on the decode side so that mismatched peers fail with a message that
says what differs instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata

# Version of the kv_transfer_params handoff record exchanged between the prefill and decode engines.
# History:
#   1 — first version: handoff id, producer engine id, TP size, one entry per TP rank, block and token counts,
#       compatibility hash over model, KV shape per rank, dtype, block size and TP size.
#   2 — the handoff's secret: only the decode engine holding it can fetch the KV (the producer's transport
#       makes it prove so), and it travels here, never on NATS. KV cache groups and MLA: "starts" gives, per KV
#       cache group moved, the first block position the handoff holds (sliding-window groups hold only their
#       window); the hash covers the groups and the attention kind; an MLA handoff lists one shard per decode
#       rank it serves ("ranks"), however many ranks the prefill engine runs.
WIRE_VERSION = 2

# Key under which SplitZip's record sits in kv_transfer_params (beside vLLM's do_remote_prefill/decode).
PARAMS_KEY = "splitzip"


def compat_hash(
    *,
    model: str,
    layers: int,
    kv_heads_per_rank: int,
    head_size: int,
    block_size: int,
    dtype: str,
    tp_size: int,
    kv_layout: str = "",
    groups: str = "",
) -> str:
    """The fields both engines of a handoff must share, hashed; kv_layout names the order of a block's
    elements (backend-specific), so engines whose attention backends lay blocks out differently never
    exchange them; groups describes the KV cache groups moved (kind, window, layers: groups.describe). An MLA
    model hashes tp_size 0: every rank holds the whole latent, so engines of any TP sizes exchange it."""
    s = json.dumps(
        {
            "v": WIRE_VERSION,
            "model": model,
            "layers": layers,
            "kv_heads": kv_heads_per_rank,
            "head_size": head_size,
            "block_size": block_size,
            "dtype": dtype,
            "tp_size": tp_size,
            "kv_layout": kv_layout,
            "groups": groups,
        },
        sort_keys=True,
    )
    return hashlib.sha256(s.encode()).hexdigest()[:24]


@dataclass
class RankEntry:
    """One TP rank's shard of a handoff: the Go control plane keys it handoff_id.r<rank>."""

    rank: int
    key: str


@dataclass
class HandoffParams:
    """The decode engine's instructions for loading a request, built by the prefill engine's scheduler.

    num_blocks: the whole blocks before the prompt's last token, per group; starts: per KV cache group moved,
    the first of those block positions the handoff holds (0 but for sliding-window and chunked-local groups);
    ranks: the shards, one per decode rank that loads (the prefill engine's TP ranks; for an MLA model, as many
    as the decode engine has ranks, since any prefill rank holds the whole latent)."""

    handoff_id: str
    engine_id: str
    tp_size: int
    num_blocks: int
    num_tokens: int
    compat: str
    ranks: list[RankEntry] = field(default_factory=list)
    starts: list[int] = field(default_factory=lambda: [0])
    version: int = WIRE_VERSION
    secret: str = field(default="", repr=False)  # lets the decode engine, and no one else, fetch the KV

    @classmethod
    def build(
        cls,
        handoff_id: str,
        secret: str,
        engine_id: str,
        tp_size: int,
        num_blocks: int,
        num_tokens: int,
        compat: str,
        *,
        starts: list[int] | None = None,
        shards: int = 0,
    ) -> "HandoffParams":
        """shards: how many rank entries (0: one per prefill rank)."""
        ranks = [RankEntry(rank=r, key=f"{handoff_id}.r{r}") for r in range(shards or tp_size)]
        return cls(handoff_id, engine_id, tp_size, num_blocks, num_tokens, compat, ranks, list(starts or [0]), secret=secret)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "compat": self.compat,
            "handoff_id": self.handoff_id,
            "secret": self.secret,
            "engine_id": self.engine_id,
            "tp_size": self.tp_size,
            "num_blocks": self.num_blocks,
            "num_tokens": self.num_tokens,
            "starts": list(self.starts),
            "ranks": [{"rank": e.rank, "key": e.key} for e in self.ranks],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, compat: str, tp_size: int, latent: bool = False) -> "HandoffParams":
        """Parses and checks a record: version first, then TP size, then the compatibility hash. latent (an MLA
        model): the prefill engine's TP size may differ, as long as the record has one shard per rank of this
        engine (tp_size). Raises ValueError saying what to change."""
        if not isinstance(d, dict):
            raise ValueError(f"kv_transfer_params[{PARAMS_KEY!r}] is {type(d).__name__}, not a mapping")
        v = d.get("version")
        if v != WIRE_VERSION:
            raise ValueError(
                f"SplitZip handoff record version {v!r}, this engine speaks {WIRE_VERSION}: run the same "
                "splitzip-connector release on the prefill and decode engines"
            )
        if latent:
            if len(d.get("ranks", [])) != tp_size:
                raise ValueError(
                    f"the prefill engine published {len(d.get('ranks', []))} MLA shard(s), this decode engine runs "
                    f"{tp_size} ranks: set kv_connector_extra_config remote_tp_size = {tp_size} on the prefill "
                    "engine, so that it serves a shard per decode rank"
                )
        elif d.get("tp_size") != tp_size:
            raise ValueError(
                f"the prefill engine runs tensor-parallel size {d.get('tp_size')}, this decode engine {tp_size}: "
                "SplitZip moves each rank's KV shard to the same rank, so start both with the same "
                "--tensor-parallel-size"
            )
        if d.get("compat") != compat:
            raise ValueError(
                f"SplitZip compatibility hash {d.get('compat')!r} from the prefill engine differs from this "
                f"engine's {compat!r}: both must serve the same model with the same KV dtype, block size, "
                "tensor-parallel size and attention backend layout"
            )
        secret = d.get("secret")
        if not isinstance(secret, str) or not secret:
            raise ValueError(
                "SplitZip handoff record carries no secret: the proxy must pass kv_transfer_params from the prefill "
                "engine's response to the decode engine unchanged"
            )
        ranks = [RankEntry(int(e["rank"]), str(e["key"])) for e in d.get("ranks", [])]
        if sorted(e.rank for e in ranks) != list(range(len(ranks) if latent else tp_size)):
            raise ValueError(f"SplitZip handoff record lists ranks {[e.rank for e in ranks]}, want 0..{tp_size - 1}")
        starts = [int(x) for x in d.get("starts", [])]
        return cls(
            handoff_id=str(d["handoff_id"]),
            engine_id=str(d["engine_id"]),
            tp_size=int(d["tp_size"]),
            num_blocks=int(d["num_blocks"]),
            num_tokens=int(d["num_tokens"]),
            compat=str(d["compat"]),
            ranks=ranks,
            starts=starts,
            version=int(v),
            secret=secret,
        )


@dataclass
class SaveSpec:
    """A request whose prefill completes this step: every rank saves blocks layer by layer under handoff_id and
    secret."""

    request_id: str
    handoff_id: str
    block_ids: list[int]
    secret: str = field(default="", repr=False)


@dataclass
class LoadSpec:
    """A request to load: the handoff's blocks go into block_ids, in order (as many as the handoff holds); the
    secret proves this engine is the one the handoff is for. error: the scheduler found the load impossible
    after vLLM allocated its blocks; the workers report it failed (vLLM's kv_load_failure_policy applies)
    without fetching anything."""

    request_id: str
    handoff_id: str
    block_ids: list[int]
    secret: str = field(default="", repr=False)
    error: str = ""


@dataclass
class SplitZipConnectorMetadata(KVConnectorMetadata):
    """Per-step instructions from the scheduler to every worker."""

    saves: list[SaveSpec] = field(default_factory=list)
    loads: list[LoadSpec] = field(default_factory=list)
    # Requests whose blocks the scheduler holds for an async save (request_finished returned True): a worker
    # reports them finished sending once their layers are staged.
    held: list[str] = field(default_factory=list)

    def add_save(self, request_id: str, handoff_id: str, block_ids: list[int], secret: str) -> None:
        self.saves.append(SaveSpec(request_id, handoff_id, list(block_ids), secret))

    def add_load(self, request_id: str, handoff_id: str, block_ids: list[int], secret: str) -> None:
        self.loads.append(LoadSpec(request_id, handoff_id, list(block_ids), secret))
