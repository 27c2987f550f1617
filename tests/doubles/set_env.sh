# TEST DOUBLE for CANN's /usr/local/Ascend/ascend-toolkit/set_env.sh.
# Like the real one it puts `atc` on PATH and the Python bindings (acl, aclruntime) on
# PYTHONPATH, here the test doubles in this folder. Only for tests: no NPU is involved.
_doubles="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="${_doubles}:${PATH}"
export PYTHONPATH="${_doubles}${PYTHONPATH:+:${PYTHONPATH}}"
unset _doubles
