#!/usr/bin/env bash
# DoReMi on the Pile, one node of 8 GPUs: one doremi process per GPU, data
# parallel (docs/distributed.md). Every rank reads the same run config and
# data; rank 0 writes runs/pile-120m. An interrupted job resubmitted with the
# same script resumes from the stages' last checkpoints (on any GPU count:
# the global batch, 64 × 8 = 512 sequences per step, does not depend on it).
#
#   sbatch examples/pile/slurm-1node.sh            # from the repository root
#
# Needs a doremi built with CUDA, MPI and NCCL (cmake reports doremi::mpi and
# doremi::nccl) and Slurm's PMIx/PMI2 plugin for srun (else use
# `mpirun -np 8 build/examples/doremi ...` inside the allocation).
#SBATCH --job-name=doremi-pile-120m
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=7-00:00:00
#SBATCH --output=runs/slurm-%j.out
set -euo pipefail
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
# Each rank takes GPU (local rank mod visible GPUs): --device cuda in the config.
# --kill-on-bad-exit: a rank that dies ends the others (which would otherwise
# wait in NCCL's all-reduce on the GPU); a rank's error ends the job itself.
srun --mpi=pmix --cpu-bind=cores --kill-on-bad-exit=1 build/examples/doremi pipeline --config examples/pile/pile-120m.json
