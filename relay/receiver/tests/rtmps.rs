//! RTMPS end to end: nginx's stream module terminates TLS in front of
//! nginx-rtmp, as RTMPS ingests are commonly run. The worker trusts the
//! test's CA through `SSL_CERT_FILE`, and refuses a certificate that does not
//! name the host it dialled.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::{Feeder, Nginx, Worker, free_tcp_port, pattern, probe};

#[test]
fn rtmps_with_a_verified_certificate_and_one_that_names_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (ca_pem, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("leaf.pem"),
        dir.path().join("leaf.key"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let tls_port = free_tcp_port();
    let nginx = Nginx::start_with_tls(
        &dir.path().join("nginx"),
        free_tcp_port(),
        Some((tls_port, &cert, &key)),
    );
    // The certificate names localhost, not 127.0.0.1: the second must fail.
    let outputs = format!(
        r#"[{{"id":"ok","url":"rtmps://localhost:{tls_port}/live/secretkey"}},
            {{"id":"wrongname","url":"rtmps://127.0.0.1:{tls_port}/live/otherkey"}}]"#
    );
    let mut w = Worker::start_env(
        dir.path(),
        2,
        &outputs,
        &[],
        &[("SSL_CERT_FILE", ca_pem.as_path())],
    );
    let feeder = Feeder::start(&w.ports, &pattern(45)[..1520 * 1316], false);
    feeder.finish();
    let stats = w.latest_stats();
    let text = stats.to_string();
    assert!(
        !text.contains("secretkey") && !text.contains("otherkey"),
        "a stream key leaked into stats: {text}"
    );
    assert_eq!(stats["outputs"][0]["state"], "live", "{stats}");
    assert_ne!(stats["outputs"][1]["state"], "live", "{stats}");
    let why = stats["outputs"][1]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("certificate"), "{stats}");
    assert_eq!(stats["outputs"][1]["bytes"], 0, "{stats}");
    w.send(r#"{"cmd":"stop"}"#);
    w.wait_event("stopped", Duration::from_secs(15))
        .expect("stopped event");
    assert!(w.proc.0.wait().unwrap().success());

    let flv = nginx.recordings();
    assert_eq!(
        flv.len(),
        1,
        "only the verified connection published: {flv:?}"
    );
    let (codecs, dur) = probe(&flv[0]);
    assert!(
        codecs.contains(&"h264".into()) && codecs.contains(&"aac".into()),
        "{codecs:?}"
    );
    assert!((6.5..=9.0).contains(&dur), "nginx recorded {dur} s of 8");
}
