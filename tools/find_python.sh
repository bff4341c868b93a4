#!/usr/bin/env sh
# Print the path of a Python >= 3.12 interpreter, or explain what is missing and fail.
# Looks at $PYTHON, then python3.13/python3.12/python3 on PATH, then pyenv and uv installs.
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for c in "${PYTHON:-}" python3.12 python3.13 python3.14 python3; do
  [ -n "$c" ] || continue
  p=$(command -v "$c" 2>/dev/null) || continue
  if ok "$p"; then echo "$p"; exit 0; fi
done
roots=""
command -v pyenv >/dev/null 2>&1 && roots="$(pyenv root 2>/dev/null)/versions"
roots="$roots ${PYENV_ROOT:-$HOME/.pyenv}/versions $HOME/.local/share/uv/python /usr/local/bin /opt/python"
for r in $roots; do
  for p in $(ls -d "$r"/*3.1[2-9]*/bin/python3 "$r"/cpython-3.1[2-9]*/bin/python3 "$r"/python3.1[2-9] 2>/dev/null | sort); do
    if ok "$p"; then echo "$p"; exit 0; fi
  done
done
echo "error: no Python >= 3.12 found (tried \$PYTHON, python3.13, python3.12, python3, pyenv and uv installs)." >&2
echo "Install Python 3.12 or newer, or run: make PYTHON=/path/to/python3.12 ..." >&2
exit 1
