# Sourced (from the repository root) by the multi-GPU bench scripts: the carried wheels on the path, NVLink
# multicast off in NCCL, PyTorch and NVSHMEM (the device's KINDS.md says why), NPROC = the GPUs present.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
