#!/usr/bin/env bash
# Print the path of a Python interpreter of the given version (3.12, 3.13.0, ...).
#
#   bash deploy/pythons.sh 3.13      -> /root/.pyenv/versions/3.13.0/bin/python3.13
#
# Looks for pythonX.Y on PATH, then under pyenv (${PYENV_ROOT:-~/.pyenv}/versions/X.Y*),
# then uv's managed Pythons (~/.local/share/uv/python), and runs each candidate to check
# its version (a pyenv shim for a version that is not selected is on PATH but refuses to run).
# Exits 1 with a message on stderr when none is found.
set -euo pipefail

want="${1:-}"
want="${want#python}"
if [[ ! "$want" =~ ^3\.[0-9]+(\.[0-9]+)?$ ]]; then
    echo "usage: $0 VERSION   (e.g. 3.12 or 3.13.0)" >&2
    exit 2
fi
minor="$(cut -d. -f1,2 <<<"$want")"

# The interpreter's own path if it runs and is version $want, else nothing.
check() {
    local candidate="$1" found
    [[ -x "$candidate" ]] || return 1
    found="$("$candidate" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3]); print(sys.executable)' 2>/dev/null)" || return 1
    local version="${found%%$'\n'*}" path="${found#*$'\n'}"
    [[ "$version" == "$want" || "$version" == "$want".* ]] || return 1
    echo "$path"
}

candidates=()
while IFS= read -r c; do candidates+=("$c"); done < <(type -a -P "python$minor" 2>/dev/null || true)
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
uv_root="${UV_PYTHON_INSTALL_DIR:-$HOME/.local/share/uv/python}"
# Newest patch release first.
while IFS= read -r c; do candidates+=("$c"); done < <(
    { compgen -G "$pyenv_root/versions/$want*/bin/python$minor" || true
      compgen -G "$uv_root/cpython-$want*/bin/python$minor" || true; } | sort -r -V)

for c in "${candidates[@]}"; do
    if check "$c"; then
        exit 0
    fi
done

echo "no Python $want found: looked for python$minor on PATH, in $pyenv_root/versions/$want* and in $uv_root;" \
     "install it (e.g. 'pyenv install $minor') or give its path (make test PYTHON=/path/to/python$minor VENV=.venv-$minor)" >&2
exit 1
