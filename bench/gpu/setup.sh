# Source at the start of every command on the GPU machine (from the repo root):
#   source bench/gpu/setup.sh
# onnxruntime-gpu arrives in parts (.ortgpu, see ../shared/tools/ort-gpu/README.md); the
# daemon's pure-Python/CPU dependencies as wheels (.whl); speech as .benchdata/audio.
export PYTHONUNBUFFERED=1
source .ortgpu/on-device.sh
if [ ! -f /tmp/site/.ok ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && touch /tmp/site/.ok
fi
[ -f /tmp/site/.ok ] || echo "setup: daemon dependencies missing (carry .whl)"
export PYTHONPATH="$PWD/daemon${PYTHONPATH:+:$PYTHONPATH}:/tmp/site"
export VOICEID_HOME=/tmp/vh
export AUDIO="$PWD/.benchdata/audio"
mkdir -p "${OUT:-/tmp/out}"
