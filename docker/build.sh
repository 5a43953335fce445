#!/usr/bin/env bash
# The image's build steps: the Dockerfile runs this script, and CI runs the same script outside
# Docker (where there is no Docker engine) and checks its result.
#
#   docker/build.sh [--cli-only] PREFIX [release|debug]
#   docker/build.sh --cli-version
#
# Builds the service (`cargo build --locked`, release unless told `debug`) and copies the binary to
# PREFIX/bin, and installs the pinned Claude Code CLI into PREFIX/cli with npm; it writes nothing else
# (besides cargo's target/ and npm's cache). The CLI's version is read from src/agent/cli.rs
# (TESTED_CLI_VERSION), never written down a second time. Then it checks what it made: the binary
# answers --version, the CLI answers its pinned version, and print-config takes the CLI's path from
# CLAUDE_AGENT_CLI_PATH (the variable the image sets).
#
#   --cli-only      only the CLI (the Dockerfile installs it in a layer of its own, before the sources)
#   --cli-version   print the pinned CLI version and exit
#
# A CLI already in PREFIX/cli at the pinned version is kept. CLAUDE_AGENT_BUILD_CLI_FROM=DIR copies
# the CLI from an existing install of the pinned version (DIR/node_modules/.bin/claude, e.g. the
# tests' target/claude-cli-<version>) instead of downloading its ~400 MB again: CI uses this.
set -euo pipefail
cd "$(dirname "$0")/.."

cli_version=$(sed -n 's/^pub const TESTED_CLI_VERSION: &str = "\([0-9][0-9.]*\)";$/\1/p' src/agent/cli.rs)
[ -n "$cli_version" ] || {
  echo "build.sh: no TESTED_CLI_VERSION found in src/agent/cli.rs" >&2
  exit 1
}
cli_package=@anthropic-ai/claude-code

cli_only=false
case "${1:-}" in
  --cli-version)
    echo "$cli_version"
    exit 0
    ;;
  --cli-only)
    cli_only=true
    shift
    ;;
esac
[ $# -ge 1 ] && [ $# -le 2 ] || {
  echo "usage: docker/build.sh [--cli-only] PREFIX [release|debug] | --cli-version" >&2
  exit 2
}
prefix=$1
profile=${2:-release}
# debug is for CI: the binary is built as the tests build it (`--tests` turns on the dev-dependencies'
# features, tokio's test-util among them, which change nothing the binary does), so after a test run
# nothing is compiled again; a plain `cargo build` would rebuild most dependencies without them.
case "$profile" in
  release) cargo_args=(--release) ;;
  debug) cargo_args=(--tests) ;;
  *)
    echo "build.sh: the profile is release or debug, not $profile" >&2
    exit 2
    ;;
esac
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
cli="$prefix/cli/node_modules/.bin/claude"

# The first word of `claude --version` (it prints `<version> (Claude Code)`), or nothing.
version_of() { "$1" --version 2>/dev/null | awk 'NR == 1 { print $1 }' || true; }

# The CLI: kept when already there, else copied from CLAUDE_AGENT_BUILD_CLI_FROM, else from npm.
if [ -x "$cli" ] && [ "$(version_of "$cli")" = "$cli_version" ]; then
  echo "== the CLI: $cli_package@$cli_version is already in $prefix/cli"
elif [ -n "${CLAUDE_AGENT_BUILD_CLI_FROM:-}" ]; then
  from=$CLAUDE_AGENT_BUILD_CLI_FROM
  found=$(version_of "$from/node_modules/.bin/claude")
  [ "$found" = "$cli_version" ] || {
    echo "build.sh: CLAUDE_AGENT_BUILD_CLI_FROM=$from holds CLI ${found:-nothing}, not $cli_version" >&2
    exit 1
  }
  echo "== the CLI: copying $cli_package@$cli_version from $from"
  rm -rf "$prefix/cli"
  # Hard links where the file system allows (instant, no second 400 MB); else a full copy.
  cp -al "$from" "$prefix/cli" 2>/dev/null || { rm -rf "$prefix/cli" && cp -a "$from" "$prefix/cli"; }
else
  echo "== the CLI: npm install $cli_package@$cli_version"
  npm install --no-audit --no-fund --save-exact --prefix "$prefix/cli" "$cli_package@$cli_version"
fi
found=$(version_of "$cli")
[ "$found" = "$cli_version" ] || {
  echo "build.sh: $cli answers version '${found}', not $cli_version" >&2
  exit 1
}
echo "ok: $cli --version is $cli_version"
$cli_only && exit 0

echo "== the service: cargo build --locked ${cargo_args[*]} --bin claude-agent-http"
cargo build --locked "${cargo_args[@]}" --bin claude-agent-http
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
mkdir -p "$prefix/bin"
install -m 0755 "$target_dir/$profile/claude-agent-http" "$prefix/bin/claude-agent-http"

bin="$prefix/bin/claude-agent-http"
package_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
answer=$("$bin" --version)
[ "$answer" = "claude-agent-http $package_version" ] || {
  echo "build.sh: $bin --version answers '$answer', not 'claude-agent-http $package_version'" >&2
  exit 1
}
echo "ok: $answer"

# print-config with nothing but the CLI's path set (an empty folder, so no ./config.yaml, and no other
# CLAUDE_AGENT_* variable): the path must come back unchanged, with no warning.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
(cd "$scratch" && env -i PATH="$PATH" HOME="$scratch" CLAUDE_AGENT_CLI_PATH="$cli" \
  "$bin" print-config >"$scratch/out" 2>"$scratch/err") || {
  cat "$scratch/err" >&2
  echo "build.sh: $bin print-config failed" >&2
  exit 1
}
if [ -s "$scratch/err" ]; then
  cat "$scratch/err" >&2
  echo "build.sh: print-config warned" >&2
  exit 1
fi
grep -qxF "  cli_path: $cli" "$scratch/out" || {
  cat "$scratch/out" >&2
  echo "build.sh: print-config does not show defaults.cli_path: $cli" >&2
  exit 1
}
echo "ok: print-config takes defaults.cli_path from CLAUDE_AGENT_CLI_PATH"
echo "== built into $prefix: bin/claude-agent-http, cli/ ($cli_package@$cli_version)"
