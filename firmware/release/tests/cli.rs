//! The `strata-release` tool as a vendor uses it: make a key, sign a
//! binary, and the signature verifies for that version and target only.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata-release"))
}

#[test]
fn keygen_sign_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("release.key");
    let out = tool().args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(public.len(), 64);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is 0600");
    // A second keygen never overwrites a key.
    assert!(
        !tool()
            .args(["keygen", "--out"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    let again = tool().args(["public", "--key"]).arg(&key).output().unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), public);

    let bin = tmp.path().join("strata-agent");
    std::fs::write(&bin, b"\x7fELF pretend").unwrap();
    let sig = tool()
        .args([
            "sign",
            "--version",
            "1.2.3",
            "--target",
            "aarch64-unknown-linux-gnu",
            "--key",
        ])
        .arg(&key)
        .arg("--binary")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        sig.status.success(),
        "{}",
        String::from_utf8_lossy(&sig.stderr)
    );
    let sig = String::from_utf8(sig.stdout).unwrap();
    let (digest, _) = strata_release::sha256_hex(std::fs::File::open(&bin).unwrap()).unwrap();
    strata_release::verify(&public, "1.2.3", "aarch64-unknown-linux-gnu", &digest, &sig).unwrap();
    assert!(
        strata_release::verify(&public, "1.2.4", "aarch64-unknown-linux-gnu", &digest, &sig)
            .is_err()
    );

    // A key others can read is refused.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = tool()
        .args(["sign", "--version", "1.2.3", "--key"])
        .arg(&key)
        .arg("--binary")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}
