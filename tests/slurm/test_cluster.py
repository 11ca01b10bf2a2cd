"""The local Slurm cluster itself: 2 nodes x 2 tasks run, and the preempting partition exists."""

import subprocess


def test_two_nodes_two_tasks(slurm_cluster):
    res = subprocess.run(
        [
            "srun",
            "-p",
            "debug",
            "-N",
            "2",
            "--ntasks-per-node",
            "2",
            "--time",
            "5",
            "bash",
            "-c",
            "echo $SLURM_PROCID $SLURMD_NODENAME",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines() if line.strip()]
    assert sorted(int(rank) for rank, _ in rows) == [0, 1, 2, 3]
    nodes = [node for _, node in rows]
    assert len(set(nodes)) == 2 and all(nodes.count(n) == 2 for n in set(nodes))


def test_urgent_partition_exists(slurm_cluster):
    res = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "urgent" in {p.rstrip("*") for p in res.stdout.split()}
