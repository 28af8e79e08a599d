# Sourced (from the repository root) by the GPU bench scripts: the carried wheels (.whl) installed into /tmp/site
# once per machine, with bytecode, and on the path with `src`. The device sets PYTHONDONTWRITEBYTECODE=1, so an
# install without bytecode (pip --no-compile) made every process compile diffusers' sources again: `from diffusers
# import DiffusionPipeline` took 20-21 s per process that way against 12.5-14 s with bytecode (H200, session 11),
# which inflated every cold-process figure measured before (bench/RESULTS.md).
if [ ! -f /tmp/site/.glancetune-wheels ] || [ "$(cat /tmp/site/.glancetune-wheels)" != "$(ls .whl)" ]; then
  python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  ls .whl > /tmp/site/.glancetune-wheels
fi
python3 -m compileall -q src > /dev/null
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
