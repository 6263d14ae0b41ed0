#!/usr/bin/env bash
# DoReMi on the Pile across several nodes of 8 GPUs (here 2: 16 ranks; the
# original implementation supports one node only). The same run and results
# as slurm-1node.sh up to float rounding: the global batch of 512 sequences is
# split over all ranks (32 per GPU on 16 GPUs, one micro-batch each). The
# output folder and the data must be on a file system every node sees.
#
#   sbatch --nodes=2 examples/pile/slurm-nodes.sh
#
# NCCL uses the nodes' InfiniBand/RoCE NICs when present (NCCL_DEBUG=INFO
# shows the transport); the per-step gradient sum of doremi-120m is ~0.5 GB (fp32).
#SBATCH --job-name=doremi-pile-120m
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=4-00:00:00
#SBATCH --output=runs/slurm-%j.out
set -euo pipefail
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
srun --mpi=pmix --cpu-bind=cores --kill-on-bad-exit=1 build/examples/doremi pipeline --config examples/pile/pile-120m.json
