# Source on a GPU machine, from the repository root:  . benchmarks/device_env.sh [BUNDLE_DIR]
# Installs what benchmarks/device_bundle.py packed: the wheels and the trimmed tritonserver under
# $INGOT_DEVICE_SITE (default /tmp/site), first on PYTHONPATH; and an environment for Triton's
# Python-backend stub, $INGOT_DEVICE_STUB_ENV (default /tmp/stub-env), that sees numpy 1.26 first and
# then this python's own packages (torch, safetensors): the stub ignores PYTHONPATH, and under numpy 2 it
# sends empty output tensors. INGOT_TRITON_PYTHON tells engines/triton/launcher.py to use it.
ingot_bundle=${1:-.gpu}
ingot_site=${INGOT_DEVICE_SITE:-/tmp/site}
ingot_stub_env=${INGOT_DEVICE_STUB_ENV:-/tmp/stub-env}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$ingot_site" \
    "$ingot_bundle"/wheels/*.whl || return 1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
    "$ingot_bundle"/pytriton-py"$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')".tar.xz \
    "$ingot_site" || return 1
python3 -m venv --without-pip "$ingot_stub_env" || return 1
ingot_stub_site=$("$ingot_stub_env"/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$ingot_stub_site" \
    "$ingot_bundle"/stub-wheels/*.whl || return 1
python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$ingot_stub_site"/ingot-base.pth
export INGOT_TRITON_PYTHON="$ingot_stub_env/bin/python3"
export PYTHONPATH="$ingot_site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
