# Sourced (from the repository root) by the multi-GPU bench scripts: the carried wheels on the path, NVLink
# multicast off in NCCL, PyTorch and NVSHMEM (the device's KINDS.md says why), NPROC = the GPUs present.
source bench/gpu/gpu_env.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
