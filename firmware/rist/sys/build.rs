//! Finds librist with pkg-config (host, Buildroot, Yocto or a cross sysroot all
//! provide a .pc file) and generates bindings against exactly that header.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    let lib = pkg_config::Config::new()
        .atleast_version("0.2.7")
        .probe("librist")
        .unwrap_or_else(|e| {
            panic!("librist >= 0.2.7 not found by pkg-config (Debian: apt-get install librist-dev): {e}")
        });

    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("rist_.*|librist_.*")
        .allowlist_type("rist_.*|librist_.*")
        .allowlist_var("RIST_.*|LIBRIST_.*")
        .default_enum_style(bindgen::EnumVariation::Rust {
            non_exhaustive: true,
        })
        .derive_default(true)
        .layout_tests(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for path in &lib.include_paths {
        builder = builder.clang_arg(format!("-I{}", path.display()));
    }
    // Cross builds: let clang parse the headers for the target, not the host.
    if let Ok(target) = env::var("TARGET") {
        builder = builder.clang_arg(format!("--target={target}"));
    }
    if let Ok(sysroot) = env::var("STRATA_SYSROOT") {
        builder = builder.clang_arg(format!("--sysroot={sysroot}"));
    }
    // librist >= 0.2.8 turned rist_peer_config_defaults_set into a static
    // inline over a versioned function, which bindgen cannot bind.
    println!("cargo::rustc-check-cfg=cfg(rist_versioned_defaults)");
    let versioned = lib
        .include_paths
        .iter()
        .chain([&PathBuf::from("/usr/include")])
        .filter_map(|dir| std::fs::read_to_string(dir.join("librist/peer.h")).ok())
        .next()
        .is_some_and(|h| h.contains("rist_peer_config_defaults_set_versioned"));
    if versioned {
        println!("cargo:rustc-cfg=rist_versioned_defaults");
    }
    let bindings = builder.generate().expect("bindgen failed on librist.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(out).expect("writing bindings");
}
