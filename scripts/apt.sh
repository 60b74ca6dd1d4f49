# Sourced by the test and benchmark scripts: installs what a script needs from Debian's
# packages, as root or with sudo.
#
#   apt_install PACKAGE...            installs the packages
#   need_commands COMMAND:PACKAGE...  installs the package of each command that is missing
#
# The package lists are fetched only when the first try fails (a freshly installed machine
# has none). Nothing is printed unless both tries fail; then apt's own output says why.

apt_install() {
  local sudo="" log
  [ "$(id -u)" = 0 ] || sudo="sudo"
  log=$(mktemp)
  # (Through env: sudo does not pass DEBIAN_FRONTEND on.)
  if $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$log" 2>&1 \
    || { $sudo apt-get update -qq >"$log" 2>&1 \
      && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$log" 2>&1; }; then
    rm -f "$log"
    return 0
  fi
  echo "installing the Debian packages $* failed:" >&2
  cat "$log" >&2
  rm -f "$log"
  return 1
}

need_commands() {
  local tool
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null && continue
    echo "== installing ${tool%%:*} (Debian package ${tool#*:})" >&2
    apt_install "${tool#*:}"
  done
}
