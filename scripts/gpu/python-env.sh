# Sourced by the scripts in scripts/gpu (from the repo root): makes "$python" (default python3) import
# the `pva` package of this checkout (models/ on PYTHONPATH: the device has no .venv to install it into,
# so `"$python" -m pva.<module>` runs it in place), and diffusers and open_clip_torch, installing the
# wheels carried in .whl/ into /tmp/pva-site when it cannot. The wheels
# (on a machine with network, from the repo root):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1 open_clip_torch==3.3.0 \
#     ftfy==6.3.1 wcwidth importlib_metadata lazy-importer
python=${PYTHON:-python3}
export PYTHONPATH=$PWD/models${PYTHONPATH:+:$PYTHONPATH}
if ! "$python" -c "import diffusers, open_clip" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --target /tmp/pva-site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/pva-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "$(basename "$0"): needs diffusers and open_clip_torch (see scripts/gpu/python-env.sh for the wheels)" >&2
    exit 2
  fi
fi
