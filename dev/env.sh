# Sourced by the dev scripts. The target directory lives outside the clone
# so that RocksDB's ~25-minute C++ build is paid once per machine, not once
# per checkout; everything (tests, benches, the binary) uses the release
# profile so that one build serves all.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/imstore-target}"
