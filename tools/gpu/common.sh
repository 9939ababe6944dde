# Shared by train.sh and generators.sh (sourced; repo root).
weights_only() {  # a run's checkpoint without optimiser and RNG state: small enough to come back,
  # and a run --init from it restarts Adam
  python3 -c "import torch,sys; ck=torch.load(sys.argv[1], map_location='cpu', weights_only=False); torch.save({k: ck[k] for k in ck if k not in ('optimizer','torch_rng')}, sys.argv[2])" "$1" "$2"
}
