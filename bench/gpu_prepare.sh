#!/usr/bin/env bash
# Prepare bench/gpu_check.sh for a GPU machine with no network: download, here, the wheels its
# Python lacks into .whl/ (ignored by git) so they can travel beside the script.
#
# The target (see docs/cuda.md): CPython 3.12 on x86-64 Linux with numpy, pytest, hypothesis,
# rich, matplotlib, cupy-cuda13x, cuda-bindings and NVIDIA's cuDNN libraries (nvidia-cudnn-cu13)
# already installed. Missing there: the cuDNN Python frontend and PyOpenCL with its pure-Python
# dependencies. xdev itself travels as source (gpu_check.sh imports it from the checkout).
#
#   bash bench/gpu_prepare.sh            # downloads into .whl/ (about 15 MB)
#   PYTHON=python3.12 bash bench/gpu_prepare.sh
#
# Versions are pinned so the run is reproducible; one version of each package only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl

# name==version. Each one's Requires-Dist was checked against the machine's package list:
#   pyopencl -> numpy (there), platformdirs, pytools; pytools -> platformdirs, siphash24,
#   typing-extensions (there); nvidia-cudnn-frontend imports without its optional extras
#   (cutlass-dsl, tvm-ffi serve only its Python-JIT engines, which xdev does not use).
WHEELS=(
  "pyopencl==2026.1.4"
  "pytools==2026.1.1"
  "platformdirs==4.14.8"
  "siphash24==1.9"
  "nvidia-cudnn-frontend==1.32.0"
)

mkdir -p "$DEST"
# Only these wheels: a stale second version of a package would break the install there.
rm -f "$DEST"/*.whl
for spec in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$DEST" "$spec" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  name=${spec%%==*}
  if ! ls "$DEST"/$(echo "$name" | tr '-' '_')-* >/dev/null 2>&1; then
    echo "gpu_prepare: could not download $spec" >&2
    exit 1
  fi
done

echo "gpu_prepare: wheels in $DEST/ ($(du -sh "$DEST" | cut -f1)):"
for w in "$DEST"/*.whl; do
  echo "  $(basename "$w")"
  unzip -p "$w" '*.dist-info/METADATA' 2>/dev/null | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/^/      /' || true
done
echo "gpu_prepare: next, on the GPU machine from the repository root (with .whl carried):"
echo "  bash bench/gpu_check.sh"

# bench/gpu_opencl.sh also wants CLBlast and Debian's OpenCL ICD loader (the GPU machine has
# neither; CLBlast's tools crashed with the loader bundled in pyopencl's wheel). They travel
# as .debs in .deb/ and are unpacked there with dpkg -x, no root needed.
if command -v apt-get >/dev/null 2>&1; then
  mkdir -p .deb && rm -f .deb/*.deb
  if (cd .deb && apt-get download libclblast1 ocl-icd-libopencl1 >/dev/null 2>&1); then
    echo "gpu_prepare: .debs in .deb/: $(cd .deb && ls *.deb | tr '\n' ' ')"
  else
    echo "gpu_prepare: apt-get download libclblast1 ocl-icd-libopencl1 failed; gpu_opencl.sh will skip CLBlast" >&2
  fi
else
  echo "gpu_prepare: no apt-get here; gpu_opencl.sh will skip CLBlast unless .deb/ holds libclblast1 and ocl-icd-libopencl1" >&2
fi
echo "  bash bench/gpu_opencl.sh      # CUDA vs OpenCL (needs .deb/ for the CLBlast rows)"
