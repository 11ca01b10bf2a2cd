"""Named device mesh dp_replicate x dp_shard x sp x tp (torchtitan's ParallelDims idea).

Why not torchtitan's own `ParallelDims`: in torchtitan 0.3.0 `build_mesh` assumes a CUDA device
type and a "fake" c10d backend from torch nightlies, so it fails on CPU with torch 2.13 (where the
tests run). This is the same idea in a few lines over `init_device_mesh`.

Dimensions, outermost first (global rank = ((rep * dp_shard + shard) * sp + sp_rank) * tp + tp_rank;
the innermost dimensions get the closest ranks, as torchtitan orders dp / cp / tp):

* `dp_replicate`, `dp_shard`: data parallel (HSDP's replicate and shard dimensions). Ranks that
  differ here hold different videos.
* `sp`: sequence parallel (Ulysses, fgrpo.distributed.sequence_parallel). The sp ranks of a group
  hold the same videos; each runs the transformer blocks on 1/sp of every video's tokens.
* `tp`: tensor parallel. The tp ranks of a group hold the same videos and tokens, and 1/tp of the
  heads and FFN features.

FSDP2 shards parameters over dp_shard x sp (flattened): sp ranks hold the same parameters and see
different tokens, so their gradients are partial sums that FSDP's reduce-scatter combines (see
`fsdp_mesh` for why its average then gives one process's update).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

MESH_DIMS = ("dp_replicate", "dp_shard", "sp", "tp")
FSDP_SP_DIM = "dp_shard_sp"  # the flattened dp_shard x sp dimension FSDP2 shards over when sp > 1


@dataclass
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int
    mesh: DeviceMesh | None = None
    sp: int = 1

    @classmethod
    def from_config(cls, dp_replicate: int, dp_shard: int, tp: int, world_size: int, sp: int = 1) -> "ParallelDims":
        """`dp_shard=-1` infers world_size / (dp_replicate * sp * tp)."""
        if dp_shard == -1:
            dp_shard = world_size // max(1, dp_replicate * tp * sp)
        if dp_replicate * dp_shard * sp * tp != world_size or min(dp_replicate, dp_shard, tp, sp) < 1:
            raise ValueError(
                f"parallelism: dp_replicate x dp_shard x sp x tp = {dp_replicate} x {dp_shard} x {sp} x {tp} "
                f"does not match the world size {world_size}"
            )
        return cls(dp_replicate, dp_shard, tp, world_size, sp=sp)

    @property
    def dp(self) -> int:
        """Data-parallel degree: ranks that see different videos."""
        return self.dp_replicate * self.dp_shard

    def build_mesh(self, device_type: str) -> DeviceMesh:
        """Built on every layout, one process included (a 1x1x1x1 mesh): FSDP2 then applies the same
        precision policy everywhere (see fgrpo.distributed.precision)."""
        self.mesh = init_device_mesh(
            device_type,
            (self.dp_replicate, self.dp_shard, self.sp, self.tp),
            mesh_dim_names=MESH_DIMS,
        )
        self._fsdp_sp_mesh = None
        return self.mesh

    def _built_mesh(self) -> DeviceMesh:
        assert self.mesh is not None, "ParallelDims.build_mesh() must run first"
        return self.mesh

    def _coord(self) -> list[int]:
        if self.mesh is None:
            return [0, 0, 0, 0]
        coord = self.mesh.get_coordinate()
        assert coord is not None, "this rank is outside the global mesh"  # built over every rank
        return list(coord)

    @property
    def dp_rank(self) -> int:
        """Which slice of the global batch this rank's videos are (equal across its sp and tp groups)."""
        rep, shard, _, _ = self._coord()
        return rep * self.dp_shard + shard

    @property
    def sp_rank(self) -> int:
        """Which run of every video's tokens this rank's transformer blocks process."""
        return self._coord()[2]

    @property
    def tp_rank(self) -> int:
        return self._coord()[3]

    @property
    def scores_videos(self) -> bool:
        """True on one rank per data-parallel slice (sp rank 0, tp rank 0): the rank that scores the
        slice's videos. Its sp and tp replicas hold the same videos; `gather_dp` keeps its scores."""
        return self.sp_rank == 0 and self.tp_rank == 0

    def fsdp_mesh(self) -> DeviceMesh:
        """1-D shard mesh (FSDP), or 2-D (replicate, shard) for HSDP. With sp > 1 the shard dimension
        is dp_shard x sp flattened.

        Why sp belongs to FSDP's mesh: the sp ranks hold one parameter set and each computes the
        gradient of the tokens it holds. Sequence parallelism's output gather has a reduce-scatter
        (sum) as its backward, and every sp rank holds an identical copy of the loss, so the sp
        ranks' gradients sum to sp x the gradient of one copy. FSDP's average over dp x sp ranks
        then yields (1/dp) x the sum of the dp slices' gradients: what FSDP over the dp ranks alone
        gives without sp, and one process's gradient on a one-slice layout. No loss scaling needed.
        """
        mesh = self._built_mesh()
        if self.sp == 1:
            return mesh["dp_replicate", "dp_shard"] if self.dp_replicate > 1 else mesh["dp_shard"]
        flat: DeviceMesh | None = getattr(self, "_fsdp_sp_mesh", None)
        if flat is None:  # built once per mesh, kept (torch asks callers
            # to keep flattened meshes rather than slice them from the root mesh again)
            if self.dp_replicate == 1:
                flat = mesh["dp_shard", "sp"]._flatten(FSDP_SP_DIM)
            else:
                dp = mesh["dp_replicate", "dp_shard", "sp"]._flatten("dp_replicate_shard_sp")
                flat = dp._unflatten(0, (self.dp_replicate, self.dp_shard * self.sp), ("dp_replicate", FSDP_SP_DIM))
            self._fsdp_sp_mesh = flat
        return flat

    def sp_mesh(self) -> DeviceMesh:
        return self._built_mesh()["sp"]

    def tp_mesh(self) -> DeviceMesh:
        return self._built_mesh()["tp"]

    def gather_dp(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenate each data-parallel slice once, in dp-rank order (sp and tp replicas deduplicated)."""
        if self.mesh is None:
            return local
        import torch.distributed as dist

        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous())
        # Global rank = dp_rank * (sp * tp) + sp_rank * tp + tp_rank (row-major mesh): keep the first
        # rank (sp_rank 0, tp_rank 0) of each dp slice.
        return torch.cat(parts[:: self.sp * self.tp])
