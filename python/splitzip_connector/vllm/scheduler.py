"""The scheduler half of SplitZipConnector: which requests to save and load, and which blocks they use.

Prefill engine (kv_producer): a request that arrives with kv_transfer_params {"do_remote_decode": true} is
saved in the step where its prefill completes — the scheduler picks one handoff id and secret for all TP ranks
and tells every worker the request's blocks; the workers compress each layer as the forward pass produces it. When the
request finishes (max_tokens=1), request_finished holds its blocks until every worker has staged its layers
and returns the kv_transfer_params the proxy passes to the decode engine: the only place the handoff's secret
goes, so that only that engine can fetch the KV (NATS, which every engine reads, carries the id alone).

Decode engine (kv_consumer): a request whose kv_transfer_params carry {"do_remote_prefill": true, "splitzip":
{…}} matches its prompt remotely (asynchronous load); once vLLM has allocated its blocks, the next step's
metadata tells every worker to load its shard into them.

What moves: the prompt's whole blocks short of its last token — floor((prompt - 1) / block_size) blocks, the
prefix vLLM's own prefix cache reuses when a plain engine sees the same prompt again (max_cache_hit_length =
prompt - 1, block-aligned) — and the decode engine computes the rest of the prompt (1 to block_size tokens)
itself. The decode engine thus does exactly what a plain engine does on a prefix-cache hit, so greedy outputs
equal the plain engine's for a repeated prompt, at every prompt length. Moving every block and recomputing only
the last token (as vLLM's NixlConnector does) computes the last token alone over KV from the prefill's chunk:
in bf16 that rounds differently from any computation a plain engine makes, and greedy outputs drift (measured
on vLLM's CPU backend: examples/vllm/README.md).

KV cache groups (groups.py): the handoff holds, per group, that group's blocks of the prefix — all of them for
full attention and MLA, the ones still in the window for sliding-window and chunked-local groups — concatenated
in group order; the decode engine's blocks are taken the same way from its own block table, so every real block
vLLM allocated for the loaded prefix is filled. The blocks a save reads are pinned in vLLM's block pool (an
extra reference) until every worker has staged them: vLLM frees a sliding-window group's out-of-window blocks
as the request moves on (and all of a preempted request's blocks), which must not happen under an encoder.

vLLM versions: the scheduler half reads a request's block table from the KV cache manager vLLM binds to the
connector (bind_kv_cache_manager, vLLM 0.33). Where vLLM binds only the block pool (bind_gpu_block_pool, vLLM
0.26), it keeps the block tables itself from each step's SchedulerOutput (BlockTables); nothing else differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vllm.logger import init_logger
from vllm.v1.request import RequestStatus

from .config import SplitZipConfig, check_peers, check_remote_tp, engine_info, is_latent, mla_shards, model_compat_hash
from .groups import FULL, GroupPlan, plan_groups
from .metadata import PARAMS_KEY, HandoffParams, LoadSpec, SplitZipConnectorMetadata

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

# Under "vllm." so that vLLM's logging configuration (handlers, VLLM_LOGGING_LEVEL) applies.
logger = init_logger(f"vllm.{__name__}")

# The id of vLLM's null block: the placeholder a block table holds where a sliding-window group freed a block
# (BlockPool takes block 0 for it).
NULL_BLOCK = 0


class BlockTables:
    """A request's block ids per KV cache group, as the scheduler half sees them.

    From the KV cache manager when vLLM bound one (manager() returns it; vLLM 0.33): its lists show blocks a
    sliding-window group freed as NULL_BLOCK. Otherwise (vLLM 0.26 binds only the block pool) from the
    SchedulerOutput of every step, for the requests being followed (follow): a new request's block_ids, then
    each step's new_block_ids appended (replacing the lists of a request resumed after preemption) — the record
    vLLM's model runner keeps the same way."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._kept: dict[str, list[list[int]] | None] = {}

    def follow(self, req_id: str) -> None:
        self._kept.setdefault(req_id, None)

    def forget(self, req_id: str) -> None:
        self._kept.pop(req_id, None)

    def observe(self, out: "SchedulerOutput") -> None:
        if not self._kept or self._manager() is not None:  # get() asks the manager where vLLM bound one
            return
        for nr in out.scheduled_new_reqs:
            if nr.req_id in self._kept:
                self._kept[nr.req_id] = [list(g) for g in nr.block_ids]
        cached = out.scheduled_cached_reqs
        # Requests resumed after preemption: listed among the cached ones with their whole new table (vLLM 0.33
        # and earlier); vLLM 0.34 re-sends them among the new ones instead and has no such set.
        resumed = getattr(cached, "resumed_req_ids", ())
        for i, rid in enumerate(cached.req_ids):
            new = cached.new_block_ids[i]
            if rid not in self._kept or new is None:
                continue
            kept = self._kept[rid]
            if kept is None or rid in resumed:
                self._kept[rid] = [list(g) for g in new]
            else:
                for g, ids in zip(kept, new):
                    g.extend(ids)

    def get(self, req_id: str) -> tuple[list[int], ...] | None:
        mgr = self._manager()
        if mgr is not None:
            return tuple(mgr.get_block_ids(req_id))
        kept = self._kept.get(req_id)
        return tuple(kept) if kept is not None else None


class SplitZipScheduler:
    """Scheduler-side bookkeeping (one per engine)."""

    def __init__(
        self, vllm_config: "VllmConfig", cfg: SplitZipConfig, kv_cache_manager_ref: Any, kv_cache_config: Any = None
    ) -> None:
        self.cfg = cfg
        self.block_size = vllm_config.cache_config.block_size
        self.tp_size = vllm_config.parallel_config.tensor_parallel_size
        self.latent = is_latent(vllm_config)
        self.compat = model_compat_hash(vllm_config, kv_cache_config)
        self.engine_id = cfg.engine_id
        # The groups a handoff moves (one full-attention group where vLLM gave no KV cache configuration).
        if kv_cache_config is not None and getattr(kv_cache_config, "kv_cache_groups", None):
            self.groups = plan_groups(kv_cache_config, self.block_size)
        else:
            self.groups = [GroupPlan(index=0, kind=FULL, layers=(), block_size=self.block_size, latent=self.latent)]
        self._shards = mla_shards(vllm_config, cfg) if self.latent else 0
        self._tables = BlockTables(kv_cache_manager_ref)  # kv_cache_manager_ref returns the bound manager or None
        self._block_pool: Any = None  # bound by bind_block_pool
        self._pinned: dict[str, list[Any]] = {}  # request id → blocks a save reads, pinned until staged
        # Prefill side: requests to save once their prefill completes; requests saved (handoff id, blocks,
        # tokens); requests whose blocks are held until the workers staged them (sent in the next metadata).
        self._to_save: dict[str, "Request"] = {}
        self._saved: dict[str, tuple[str, str, int, int]] = {}
        self._held: list[str] = []
        # Decode side: loads for the next metadata, and loads in flight.
        self._loads: list[LoadSpec] = []
        self._loading: set[str] = set()
        check_remote_tp(cfg, self.tp_size, self.latent)
        self._plane: Any = None
        self._registration: int | None = None
        self._register(vllm_config, kv_cache_config)

    def bind_block_pool(self, pool: Any) -> None:
        """vLLM's block pool, where saves pin the blocks they read."""
        self._block_pool = pool

    def loaded_group_ids(self) -> tuple[int, ...]:
        """The KV cache groups a load fills (vLLM 0.33 leaves their new blocks unzeroed)."""
        return tuple(g.index for g in self.groups)

    # --- start-up ---------------------------------------------------------------------------------------
    def _register(self, vllm_config: "VllmConfig", kv_cache_config: Any) -> None:
        """Announces this engine (role, TP size, KV layout) in the control plane's registry and refuses to
        start beside a registered engine of the other role it could not exchange handoffs with (config.
        check_peers). Checked before and after registering, so that of two engines starting together the
        later one sees the earlier. Mismatches that slip through (a peer starting while this one runs) are
        still caught per handoff (HandoffParams.from_dict)."""
        from .worker import shared_plane

        me = engine_info(vllm_config, self.cfg, kv_cache_config)
        plane = shared_plane(self.cfg)
        check_peers(me, plane.engines())
        reg = plane.register_engine(me)
        try:
            check_peers(me, plane.engines())
        except ValueError:
            plane.deregister_engine(reg)
            raise
        self._plane, self._registration = plane, reg
        logger.info(
            "SplitZip: engine %s registered as %s, TP %d, layout %s", me.id, me.role, me.tp_size, me.layout
        )

    def shutdown(self) -> None:
        reg, self._registration = self._registration, None
        if reg is not None:
            try:
                self._plane.deregister_engine(reg)
            except Exception as e:  # shutting down: report, go on
                logger.warning("SplitZip: deregistering engine %s: %s", self.engine_id, e)

    # --- decode side -----------------------------------------------------------------------------------
    def _handoff_params(self, request: "Request") -> HandoffParams | None:
        params = request.kv_transfer_params
        if not params or not params.get("do_remote_prefill"):
            return None
        rec = params.get(PARAMS_KEY)
        if rec is None:
            logger.warning_once(
                "Request %s asks for a remote prefill without a SplitZip handoff record (kv_transfer_params "
                "from another connector?); prefilling it locally.",
                request.request_id,
            )
            return None
        try:
            return HandoffParams.from_dict(rec, compat=self.compat, tp_size=self.tp_size, latent=self.latent)
        except (ValueError, KeyError, TypeError) as e:
            logger.error("SplitZip: request %s: %s; prefilling it locally.", request.request_id, e)
            params["do_remote_prefill"] = False
            return None

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int, bool]:
        hp = self._handoff_params(request)
        if hp is None:
            return 0, False
        n_prompt = len(request.prompt_token_ids or ())
        if hp.num_tokens != n_prompt:
            logger.error(
                "SplitZip: request %s: the handoff holds %d tokens, the prompt has %d (did the proxy change the "
                "prompt between prefill and decode?); prefilling it locally.",
                request.request_id,
                hp.num_tokens,
                n_prompt,
            )
            request.kv_transfer_params["do_remote_prefill"] = False
            return 0, False
        if num_computed_tokens > 0:
            # The local prefix cache already holds the first blocks. A handoff moves whole layers of all the
            # prompt's blocks, and the cached blocks may be shared with running requests, so they cannot take
            # the incoming copies: prefill the rest locally (exact, like a plain engine with a cache hit). The
            # unclaimed handoff expires on the producer after handoff_ttl_s.
            logger.debug(
                "SplitZip: request %s: %d tokens cached locally; prefilling the rest instead of loading",
                request.request_id,
                num_computed_tokens,
            )
            return 0, False
        if hp.num_blocks <= 0:
            request.kv_transfer_params["do_remote_prefill"] = False
            return 0, False
        want = self._starts(hp.num_blocks)
        if hp.starts != want:
            logger.error(
                "SplitZip: request %s: the handoff holds its KV cache groups from block positions %s, this engine "
                "reads them from %s (another sliding window or vLLM release on the prefill engine?); prefilling "
                "it locally.",
                request.request_id,
                hp.starts,
                want,
            )
            request.kv_transfer_params["do_remote_prefill"] = False
            return 0, False
        # The handoff's whole blocks (floor((prompt - 1) / block_size), see the module doc; a record from a
        # producer that sent the partial last block too covers the prompt, and vLLM recomputes its last token).
        return min(hp.num_blocks * self.block_size, n_prompt), True

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int) -> None:
        params = request.kv_transfer_params
        if not params:
            return
        if params.get("do_remote_decode"):
            self._to_save[request.request_id] = request
            self._tables.follow(request.request_id)
        if not params.get("do_remote_prefill"):
            return
        hp = self._handoff_params(request)
        # Load once: a retry (after a failed load, or a preemption) prefills locally.
        params["do_remote_prefill"] = False
        if hp is None or num_external_tokens <= 0:
            return
        tables = [[b.block_id for b in group] for group in blocks.blocks]
        ids, err = self._handoff_blocks(tables, hp.num_blocks, decode=True)
        if err:
            # vLLM already counts the tokens as loading: report the load failed (kv_load_failure_policy applies).
            logger.error("SplitZip: request %s: %s", request.request_id, err)
            real = [b for t in tables for b in t if b != NULL_BLOCK]
            spec = LoadSpec(request.request_id, hp.handoff_id, real, hp.secret, error=err)
        else:
            spec = LoadSpec(request.request_id, hp.handoff_id, ids, hp.secret)
        self._loads.append(spec)
        self._loading.add(request.request_id)
        logger.debug(
            "SplitZip: loading request %s from handoff %s (%d blocks)", request.request_id, hp.handoff_id[:8], len(ids)
        )

    # --- the blocks of a handoff ------------------------------------------------------------------------
    def _starts(self, num_blocks: int) -> list[int]:
        """Per group, the first block position a handoff of num_blocks whole blocks holds."""
        return [g.first_block(num_blocks * self.block_size) for g in self.groups]

    def _handoff_blocks(self, tables: Any, n: int, *, decode: bool) -> tuple[list[int], str]:
        """The block ids a handoff of n whole blocks moves, from a request's block table (a list per KV cache
        group): per group the positions [start, n), concatenated in group order. Returns ([], what is wrong)
        when the table cannot hold them: too short, a needed block already freed, or (decode side) a real block
        below a window that the handoff would leave unfilled."""
        ids: list[int] = []
        for g, start in zip(self.groups, self._starts(n)):
            if g.index >= len(tables):
                return [], f"the block table has {len(tables)} KV cache groups, want group {g.index}"
            table = tables[g.index]
            if len(table) < n:
                return [], f"{len(table)} blocks in KV cache group {g.index}, the handoff holds {n}"
            part = table[start:n]
            if NULL_BLOCK in part:
                return [], (
                    f"KV cache group {g.index} ({g.describe()}) has already freed a block of positions "
                    f"{start}..{n - 1} that the handoff needs"
                )
            if decode and any(b != NULL_BLOCK for b in table[:start]):
                return [], (
                    f"vLLM allocated real blocks below position {start} of KV cache group {g.index} "
                    f"({g.describe()}), which the handoff does not fill"
                )
            ids.extend(part)
        return ids, ""

    # --- per step ---------------------------------------------------------------------------------------
    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> SplitZipConnectorMetadata:
        meta = SplitZipConnectorMetadata()
        self._tables.observe(scheduler_output)
        if self._to_save:
            self._plan_saves(scheduler_output, meta)
        meta.loads, self._loads = self._loads, []
        meta.held, self._held = self._held, []
        return meta

    def _plan_saves(self, scheduler_output: "SchedulerOutput", meta: SplitZipConnectorMetadata) -> None:
        from splitzip_connector.handoff import new_handoff_id, new_handoff_secret

        for req_id, n_sched in scheduler_output.num_scheduled_tokens.items():
            req = self._to_save.get(req_id)
            if req is None:
                continue
            n_prompt = req.num_prompt_tokens
            # num_computed_tokens is not yet advanced for this step.
            if req.num_computed_tokens + n_sched < n_prompt:
                continue  # chunked prefill: the last chunk saves the whole prompt
            del self._to_save[req_id]
            tables = self._tables.get(req_id)
            self._tables.forget(req_id)
            # The whole blocks before the last token: what the decode engine reuses (module doc).
            n = (n_prompt - 1) // self.block_size
            if n == 0:
                logger.debug("SplitZip: request %s: %d prompt tokens, no whole block to hand off", req_id, n_prompt)
                continue
            if tables is None:
                logger.error("SplitZip: request %s: no block table seen; not saving it", req_id)
                continue
            ids, err = self._handoff_blocks(tables, n, decode=False)
            if err:
                logger.warning("SplitZip: request %s: %s; not handing it off (the decode engine prefills it)", req_id, err)
                continue
            hid, secret = new_handoff_id(), new_handoff_secret()
            meta.add_save(req_id, hid, ids, secret)
            self._pin(req_id, ids)
            self._saved[req_id] = (hid, secret, n, n_prompt)
            logger.debug("SplitZip: saving request %s as handoff %s (%d blocks)", req_id, hid[:8], len(ids))

    def _pin(self, req_id: str, ids: list[int]) -> None:
        """Holds the blocks a save reads (an extra reference in vLLM's block pool) until the workers staged
        them (module doc)."""
        pool = self._block_pool
        if pool is None:
            return
        blocks = [pool.blocks[b] for b in ids]
        pool.touch(blocks)
        self._pinned[req_id] = blocks

    def _unpin(self, req_id: str) -> None:
        blocks = self._pinned.pop(req_id, None)
        if blocks:
            self._block_pool.free_blocks(blocks)

    def update_connector_output(self, connector_output: Any) -> None:
        for req_id in connector_output.finished_recving or ():
            self._loading.discard(req_id)
        for req_id in connector_output.finished_sending or ():
            self._unpin(req_id)

    # --- end of a request -------------------------------------------------------------------------------
    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        req_id = request.request_id
        self._to_save.pop(req_id, None)
        self._tables.forget(req_id)
        saved = self._saved.pop(req_id, None)
        if saved is None:
            params = request.kv_transfer_params or {}
            if params.get("do_remote_decode") and request.status == RequestStatus.FINISHED_LENGTH_CAPPED:
                # Prefill side, nothing handed off (a prompt without a whole block before its last token): the
                # decode engine prefills it.
                return False, {"do_remote_prefill": False, "do_remote_decode": False}
            # Decode side: a load in flight keeps its blocks; vLLM holds them (WAITING_FOR_REMOTE_KVS) until the
            # workers report the load ended.
            return False, None
        hid, secret, n, n_prompt = saved
        # The workers read these blocks until their layers are staged: hold them until then.
        self._held.append(req_id)
        if request.status != RequestStatus.FINISHED_LENGTH_CAPPED:
            # Finished otherwise (stop token, abort): nothing for a decode engine to continue.
            return True, None
        hp = HandoffParams.build(
            hid, secret, self.engine_id, self.tp_size, n, n_prompt, self.compat, starts=self._starts(n), shards=self._shards
        )
        logger.debug("SplitZip: request %s handed off as %s (%d blocks, %d tokens)", req_id, hid[:8], n, n_prompt)
        return True, {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_engine_id": self.engine_id,
            PARAMS_KEY: hp.to_dict(),
        }

    def has_pending(self) -> bool:
        return bool(self._held or self._loads)
