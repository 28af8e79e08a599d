source bench/gpu/gpu_env.sh
for v in none norng noadapter noacc all; do
  echo "== $v"; AB=$v python3 bench/measure/ab_loop.py --gc 0 --steps 8 --warmup 3 2>&1 | grep '^{' | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['train_s_per_step'], d['median_s_per_step'])"
done
python3 bench/measure/anchor_loop.py --model flux1 --gc 0 --steps 8 2>&1 | grep '^{'
