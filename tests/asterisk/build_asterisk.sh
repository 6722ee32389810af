#!/usr/bin/env bash
# Builds Asterisk from an unmodified source tarball into a cache outside the checkout, once per tarball,
# with only the modules OpenDeep and its tests use. Prints the install prefix (…/sbin/asterisk inside).
#
#   tests/asterisk/build_asterisk.sh [TARBALL]
#
# TARBALL defaults to $ASTERISK_TARBALL, else ../shared/asterisk/asterisk-22.10.1.tar.gz beside the checkout.
# The cache is $OPENDEEP_CACHE_DIR (default ~/.cache/opendeep)/asterisk-<version>-<sha256 prefix>: the same
# tarball is built once per machine, a different one builds anew. Debian build dependencies: see the Makefile
# (ASTERISK_BUILD_DEBS), installed by `make test`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tarball=${1:-${ASTERISK_TARBALL:-$repo/../shared/asterisk/asterisk-22.10.1.tar.gz}}
if [ ! -f "$tarball" ]; then
  echo "no Asterisk source tarball at $tarball (set ASTERISK_TARBALL, or install Asterisk >= 22 and set ASTERISK_BIN)" >&2
  exit 3
fi

# The modules the product's dialplan and the tests' callees use; everything else stays unbuilt.
modules=(
  app_dial app_stack app_audiosocket chan_audiosocket res_audiosocket res_agi res_speech app_amd app_playback
  app_read app_echo app_milliwatt app_verbose app_senddtmf app_mixmonitor app_userevent app_exec app_record
  func_timeout func_channel func_strings func_logic func_callerid func_global func_cut
  bridge_simple bridge_builtin_features bridge_holding
  codec_ulaw codec_alaw codec_gsm codec_a_mu format_gsm format_wav format_pcm format_sln
  pbx_config res_timing_timerfd res_convert
)
categories=(ADDONS APPS BRIDGES CDR CEL CHANNELS CODECS FORMATS FUNCS PBX RES TESTS UTILS AGIS
  CORE_SOUNDS MOH EXTRA_SOUNDS)

# The cache key: the tarball's content and the module list (a different one of either builds anew).
sha=$( (sha256sum "$tarball" | cut -c1-64; echo "${modules[*]}") | sha256sum | cut -c1-16)
name=$(basename "$tarball" .tar.gz)
cache=${OPENDEEP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/opendeep}
prefix="$cache/$name-$sha"
mkdir -p "$cache"

# One build at a time per cache (two test runs starting together wait for the first).
exec 9>"$cache/.build.lock"
flock 9
if [ -f "$prefix/.built" ]; then
  echo "$prefix"
  exit 0
fi

work="$cache/.build-$name-$sha"
log="$cache/$name-$sha.build.log"
rm -rf "$work" "$prefix"
mkdir -p "$work"
echo "building $name from $tarball into $prefix (log: $log); about 5-10 minutes on 2 cores" >&2
tar xzf "$tarball" -C "$work" --strip-components=1

fail() {
  echo "Asterisk build failed at: $1. Last lines of $2:" >&2
  tail -n 25 "$2" >&2
  hint=$(grep -oiE "(jansson|libxml2|sqlite3?|uuid|libedit|openssl|ssl|ncurses|termcap|pkg-config|c compiler|g\+\+)" "$2" \
    | tail -n 1 | tr '[:upper:]' '[:lower:]' || true)
  case "$hint" in
    jansson) pkg=libjansson-dev ;; libxml2) pkg=libxml2-dev ;; sqlite*) pkg=libsqlite3-dev ;;
    uuid) pkg=uuid-dev ;; libedit) pkg=libedit-dev ;; openssl|ssl) pkg=libssl-dev ;;
    ncurses|termcap) pkg=libncurses-dev ;; pkg-config) pkg=pkg-config ;; *) pkg=build-essential ;;
  esac
  echo "The Debian package it most likely lacks: $pkg (make test installs them: see ASTERISK_BUILD_DEBS)" >&2
  exit 4
}

cd "$work"
./configure --prefix="$prefix" --without-pjproject --with-jansson-bundled=no --without-libjwt \
  --disable-xmldoc >"$log" 2>&1 || fail configure config.log
make menuselect.makeopts >>"$log" 2>&1 || fail menuselect "$log"
disable=(); for c in "${categories[@]}"; do disable+=(--disable-category "MENUSELECT_$c"); done
enable=(); for m in "${modules[@]}"; do enable+=(--enable "$m"); done
menuselect/menuselect "${disable[@]}" "${enable[@]}" menuselect.makeopts >>"$log" 2>&1 || fail menuselect "$log"
make -j"$(nproc)" >>"$log" 2>&1 || fail make "$log"
make install >>"$log" 2>&1 || fail "make install" "$log"
cd "$cache"
rm -rf "$work"
touch "$prefix/.built"
echo "$prefix"
