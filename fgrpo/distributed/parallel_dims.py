"""Named device mesh dp_replicate x dp_shard x tp (torchtitan's ParallelDims idea).

Why not torchtitan's own `ParallelDims`: in torchtitan 0.3.0 `build_mesh` assumes a CUDA device
type and a "fake" c10d backend from torch nightlies, so it fails on CPU with torch 2.13 (where the
tests run). This is the same idea in a few lines over `init_device_mesh`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


@dataclass
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int
    mesh: DeviceMesh | None = None

    @classmethod
    def from_config(cls, dp_replicate: int, dp_shard: int, tp: int, world_size: int) -> "ParallelDims":
        if dp_shard == -1:
            dp_shard = world_size // (dp_replicate * tp)
        if dp_replicate * dp_shard * tp != world_size or min(dp_replicate, dp_shard, tp) < 1:
            raise ValueError(
                f"parallelism: dp_replicate x dp_shard x tp = {dp_replicate} x {dp_shard} x {tp} "
                f"does not match the world size {world_size}"
            )
        return cls(dp_replicate, dp_shard, tp, world_size)

    @property
    def dp(self) -> int:
        """Data-parallel degree: ranks that see different videos."""
        return self.dp_replicate * self.dp_shard

    def build_mesh(self, device_type: str) -> DeviceMesh:
        """Built on every layout, one process included (a 1x1x1 mesh): FSDP2 then applies the same
        precision policy everywhere (see fgrpo.distributed.precision)."""
        self.mesh = init_device_mesh(
            device_type, (self.dp_replicate, self.dp_shard, self.tp),
            mesh_dim_names=("dp_replicate", "dp_shard", "tp"),
        )
        return self.mesh

    def _coord(self) -> list[int]:
        return self.mesh.get_coordinate() if self.mesh is not None else [0, 0, 0]

    @property
    def dp_rank(self) -> int:
        """Which slice of the global batch this rank's videos are (equal across its TP group)."""
        rep, shard, _ = self._coord()
        return rep * self.dp_shard + shard

    @property
    def tp_rank(self) -> int:
        return self._coord()[2]

    def fsdp_mesh(self) -> DeviceMesh:
        """1-D shard mesh (FSDP), or 2-D (replicate, shard) for HSDP."""
        if self.dp_replicate > 1:
            return self.mesh["dp_replicate", "dp_shard"]
        return self.mesh["dp_shard"]

    def tp_mesh(self) -> DeviceMesh:
        return self.mesh["tp"]

    def gather_dp(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenate each data-parallel slice once, in dp-rank order (TP replicas deduplicated)."""
        if self.mesh is None:
            return local
        import torch.distributed as dist

        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous())
        # Global rank = dp_rank * tp + tp_rank (row-major mesh): keep tp_rank 0 of each dp slice.
        return torch.cat(parts[:: self.tp])
