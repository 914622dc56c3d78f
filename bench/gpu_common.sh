# Shared by bench/gpu_check.sh and bench/gpu_opencl.sh, sourced first thing (it sees their
# $0 and arguments): strict mode, the repository root as cwd (REPO), --dry-run (DRY), the
# Python (PYTHON, default python3); then the step runner under a total budget, the carried
# wheels, and finding cuDNN and NVIDIA's OpenCL driver. The sourcing script sets WORK,
# BUDGET and START; SUMMARY (optional) is a file that gets one "name<TAB>exit<TAB>seconds"
# line per step.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME CAP_SECONDS COMMAND...: run under a timeout that also respects the total budget.
step() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - $(elapsed) - 10 ))
  local t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 5 ]; then
    echo "=== SKIP $name: the ${BUDGET}s budget is spent"
    [ -n "${SUMMARY:-}" ] && printf '%s\tskipped\t0\n' "$name" >>"$SUMMARY"
    return 0
  fi
  echo
  echo "=== $name (timeout ${t}s, at $(elapsed)s) ==="
  echo "+ $*"
  local t0; t0=$(date +%s)
  timeout -k 10 "$t" "$@"
  local rc=$?
  [ "$rc" = 124 ] && echo "!!! $name timed out after ${t}s"
  echo "=== $name: exit $rc after $(( $(date +%s) - t0 ))s"
  [ -n "${SUMMARY:-}" ] && printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >>"$SUMMARY"
  return 0
}

# install_wheels SITE MISSING_HINT: the wheels carried in .whl/ (bench/gpu_prepare.sh) into
# SITE (only listed in a dry run); without .whl/, say what may be missing.
install_wheels() {
  local site=$1 hint=$2
  if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
    if [ "$DRY" = 1 ]; then
      echo "dry run: would install into $site:"; ls -1 "$REPO"/.whl/*.whl | sed 's/^/  /'
    else
      rm -rf "$site"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$REPO"/.whl/*.whl || echo "!!! installing the carried wheels failed"
    fi
  else
    echo "no .whl/ here: run bench/gpu_prepare.sh where pip works and carry .whl ($hint)"
  fi
}

# python_env SITE MISSING_HINT: the carried wheels into SITE, xdev from the checkout on
# PYTHONPATH (xdev/__init__.py finds backends/ beside it), unbuffered output, and the cuDNN
# frontend pointed at the pip-installed libcudnn.so.9 (it looks on LD_LIBRARY_PATH first).
python_env() {
  local site=$1 hint=$2
  install_wheels "$site" "$hint"
  export PYTHONPATH="$REPO:$site${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
  local cudnn_dir
  cudnn_dir=$(pip_cudnn_dir)
  if [ -n "$cudnn_dir" ]; then
    export LD_LIBRARY_PATH="$cudnn_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "cuDNN library: $cudnn_dir"
  else
    echo "cuDNN library: no pip-installed libcudnn.so.9 found (the frontend will try the loader path)"
  fi
}

# The folder of the pip-installed libcudnn.so.9 that $PY sees, or nothing.
pip_cudnn_dir() {
  "$PY" - <<'PYEOF'
import glob, os, site, sys
dirs = list(getattr(site, "getsitepackages", lambda: [])()) + [site.getusersitepackages()] + sys.path
for d in dirs:
    for hit in sorted(glob.glob(os.path.join(d, "nvidia", "*", "lib", "libcudnn.so.9*"))):
        print(os.path.dirname(hit)); raise SystemExit
PYEOF
}

# The path of NVIDIA's OpenCL driver library (libnvidia-opencl.so.1), or nothing.
nvidia_opencl_lib() {
  local lib
  lib=$(ldconfig -p 2>/dev/null | awk '/libnvidia-opencl\.so\.1/ {print $NF; exit}')
  [ -z "$lib" ] && lib=$(ls /usr/local/nvidia/lib64/libnvidia-opencl.so.1 /usr/local/nvidia/lib/libnvidia-opencl.so.1 \
      /usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1 /usr/lib64/libnvidia-opencl.so.1 2>/dev/null | head -n 1)
  echo "$lib"
}

# use_nvidia_opencl: make NVIDIA's OpenCL driver visible to the ICD loader (writes
# /etc/OpenCL/vendors/nvidia.icd, or points OCL_ICD_VENDORS at a folder of $WORK when /etc is
# read-only or in a dry run). Sets OCL_SEL to the selector of its device ("opencl:nvidia"),
# or to "opencl" (the default device) when the driver is absent; returns 1 then.
use_nvidia_opencl() {
  local ocl_lib icd=/etc/OpenCL/vendors/nvidia.icd
  ocl_lib=$(nvidia_opencl_lib)
  OCL_SEL=opencl
  if [ -z "$ocl_lib" ]; then
    echo "OpenCL: no libnvidia-opencl.so.1 on this machine"
    return 1
  fi
  OCL_SEL=opencl:nvidia
  if [ -e "$icd" ]; then
    echo "OpenCL: $icd exists ($(cat "$icd"))"
  elif [ "$DRY" = 0 ] && mkdir -p /etc/OpenCL/vendors 2>/dev/null && echo "$ocl_lib" >"$icd" 2>/dev/null; then
    echo "OpenCL: wrote $icd -> $ocl_lib"
  else  # read-only /etc (or a dry run): the ICD loader also reads OCL_ICD_VENDORS
    mkdir -p "$WORK/icd" && echo "$ocl_lib" >"$WORK/icd/nvidia.icd"
    export OCL_ICD_VENDORS=$WORK/icd
    echo "OpenCL: OCL_ICD_VENDORS=$OCL_ICD_VENDORS -> $ocl_lib"
  fi
}
