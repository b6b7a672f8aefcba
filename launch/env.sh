# shellcheck shell=bash
# launch/env.sh — the environment of a moe-asr job, sourced by launch/mpirun.sh and the Slurm templates
# (and by hand: `source launch/env.sh`). Every setting keeps a value you exported before sourcing it
# (`: "${VAR:=default}"`), so site-specific choices go in your shell or job script, not here. Nothing
# here names a path, a user, a host or a network interface: those differ per cluster.
#
# The list of variables launch/mpirun.sh passes on to every rank (mpirun -x) is MOEASR_ENV_VARS below.

# ---- CPU threads ----------------------------------------------------------------------------------
# moe-asr runs one OpenMP pool per rank (train --num_threads / train_conf.num_threads sets its size) and
# calls OpenBLAS single-threaded inside it; an OpenBLAS pool of its own would oversubscribe the cores.
: "${OPENBLAS_NUM_THREADS:=1}"
export OPENBLAS_NUM_THREADS
# OMP_NUM_THREADS is left alone: the trainer sets its thread count from the flag/config.

# ---- HDF5 -----------------------------------------------------------------------------------------
# Shards are written once and then only read; HDF5's file locks fail or hang on NFS/Lustre/GPFS. The
# shard reader turns locking off per file (HDF5 >= 1.10.7); this covers older HDF5 builds too.
: "${HDF5_USE_FILE_LOCKING:=FALSE}"
export HDF5_USE_FILE_LOCKING

# ---- moe-asr ----------------------------------------------------------------------------------------
# MOEASR_LOG_LEVEL          debug | info | warning | error (default info). debug adds the per-layer
#                           expert-load table to every log interval.
# MOEASR_COLLECTIVE_TIMEOUT_S  a collective that does not complete in this many seconds aborts the whole
#                           job with the group, rank and operation named (default: the config's
#                           parallel_conf.collective_timeout_s, 600). Lower it while debugging a hang.
# MOEASR_COLLECTIVE_DEBUG=1 fingerprints every collective across its group before the data moves and
#                           names the first rank that disagrees (slower; for desynchronisation bugs).
: "${MOEASR_LOG_LEVEL:=info}"
export MOEASR_LOG_LEVEL

# ---- NCCL (GPU builds) ------------------------------------------------------------------------------
# NCCL_DEBUG=WARN prints NCCL's own errors; set INFO for the first run on a new cluster: it logs the
# interfaces, HCAs and rings NCCL picked, which is what you need when a multi-node job hangs at start.
: "${NCCL_DEBUG:=WARN}"
export NCCL_DEBUG
# NCCL_SOCKET_IFNAME: the interface NCCL's bootstrap (and its socket transport, without InfiniBand)
# uses. NCCL picks one itself; on nodes with docker/virtual bridges it may pick one that other nodes
# cannot reach and the job hangs in its first collective. Then set it to your cluster network's
# interface, or exclude the bad ones with a leading '^':
#   export NCCL_SOCKET_IFNAME=^docker,lo,virbr     (find yours with `ip -br addr`)
# NCCL_IB_HCA: which InfiniBand / RoCE adapters to use (default: all NCCL finds), e.g. only the
#   adapters of the GPU fabric. NCCL_IB_DISABLE=1 forces TCP sockets (slow; for testing only).
# NCCL_IB_GID_INDEX: RoCE needs the GID index of the RoCE v2 address (often 3); InfiniBand does not.
# NCCL_IB_TIMEOUT / NCCL_IB_RETRY_CNT: raise them (e.g. 22 / 13) on large or congested fabrics when
#   jobs die with "NET/IB : Got completion with error 12".
# NCCL_P2P_LEVEL / NCCL_NET_GDR_LEVEL: leave unset unless NCCL_DEBUG=INFO shows a poor topology choice.
# None of these is set here: NCCL's defaults are right on a well-configured cluster, and wrong values
# (a NIC name from another cluster) are worse than none.

# ---- Open MPI ---------------------------------------------------------------------------------------
# Containers often lack the kernel support for CMA single-copy transfers; Open MPI then prints warnings
# or fails in shared-memory transfers. 'none' uses plain copies.
: "${OMPI_MCA_btl_vader_single_copy_mechanism:=none}"
export OMPI_MCA_btl_vader_single_copy_mechanism
# Open MPI refuses to start as root unless told (containers and CI run as root).
if [[ "$(id -u)" -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# Passed to every rank by launch/mpirun.sh (mpirun -x NAME); unset names are skipped.
# shellcheck disable=SC2034
MOEASR_ENV_VARS=(PATH LD_LIBRARY_PATH OPENBLAS_NUM_THREADS OPENBLAS_CORETYPE OMP_NUM_THREADS HDF5_USE_FILE_LOCKING
  MOEASR_LOG_LEVEL MOEASR_COLLECTIVE_TIMEOUT_S MOEASR_COLLECTIVE_DEBUG NCCL_DEBUG NCCL_SOCKET_IFNAME
  NCCL_IB_HCA NCCL_IB_DISABLE NCCL_IB_GID_INDEX NCCL_IB_TIMEOUT NCCL_IB_RETRY_CNT NCCL_P2P_LEVEL
  NCCL_NET_GDR_LEVEL CUDA_VISIBLE_DEVICES)
