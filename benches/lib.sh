# Sourced by the scripts under benches/: the drillrig binary they drive and the plain clients
# (examples/) they compare it with, built into CARGO_TARGET_DIR (default target/).
# DRILLRIG names a drillrig binary to take as it is (the smoke tests pass the one under test);
# otherwise cargo builds it. Sets `bin` and `examples`.
bench_build() { # EXAMPLE...
    local args=() e
    for e in "$@"; do args+=(--example "$e"); done
    [ -n "${DRILLRIG:-}" ] || args+=(--bin drillrig)
    [ ${#args[@]} -eq 0 ] || cargo build --release --quiet "${args[@]}"
    examples=${CARGO_TARGET_DIR:-target}/release/examples
    bin=${DRILLRIG:-${CARGO_TARGET_DIR:-target}/release/drillrig}
}
