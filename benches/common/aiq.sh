# Sourced by the bench scripts: `built_aiq PROFILE [FEATURES]` sets AIQ to
# the binary to measure: $AIQ when the caller gave one, else aiq built with
# cargo's PROFILE (dev, release, profiling) and FEATURES in
# $CARGO_TARGET_DIR.
built_aiq() {
    if [ -n "${AIQ:-}" ]; then
        return
    fi
    local profile=$1 features=${2:-}
    cargo build --quiet --profile "$profile" ${features:+--features "$features"} --bin aiq
    case $profile in
        dev) AIQ="$CARGO_TARGET_DIR/debug/aiq" ;;
        *) AIQ="$CARGO_TARGET_DIR/$profile/aiq" ;;
    esac
}
