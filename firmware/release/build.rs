//! Exposes the target triple to the crate (releases are per target).
fn main() {
    println!(
        "cargo:rustc-env=STRATA_TARGET={}",
        std::env::var("TARGET").expect("cargo sets TARGET")
    );
}
