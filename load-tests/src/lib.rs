//! Benchmarks (`benches/`) and load generators (`src/bin/`) for the tier
//! gateway. Nothing here ships in the `dynabase` binary.
