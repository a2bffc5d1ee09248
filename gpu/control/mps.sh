# Sourced by the control scripts: start the CUDA MPS daemon so that the kernels of runs side by
# side on one GPU overlap; falls back to time-sharing when the daemon cannot serve (needs $P, say).
if [ "${DEVICE:-cuda}" = cuda ] && command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  if nvidia-cuda-mps-control -d && timeout 90 $P -c "import torch; torch.zeros(1).cuda().sum().item()"; then
    say "MPS on"
  else
    say "MPS unusable: runs time-share the GPU"; echo quit | nvidia-cuda-mps-control || true
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
