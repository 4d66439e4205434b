//! A destination that stops taking data mid-stream (a black-holed ingest:
//! the TCP connection stays up, nothing is read) never holds up the input or
//! another destination: its own write times out, it reconnects, and the
//! other destination sees no gap.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{Feeder, Nginx, Worker, free_tcp_port, pattern};

/// A TCP proxy to `upstream` whose current connection can be frozen: from
/// then on it reads nothing more from the client, but keeps the socket open.
/// Connections made after the freeze pass normally.
fn freezing_proxy(upstream: u16) -> (u16, Arc<AtomicBool>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive window, so that the client's writes block soon after the freeze.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(8).unwrap();
    let listener: TcpListener = socket.into();
    let port = listener.local_addr().unwrap().port();
    let freeze = Arc::new(AtomicBool::new(false));
    let f = freeze.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            // Only the connection that is current when the freeze comes is frozen.
            f.store(false, Ordering::Relaxed);
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut s2, &mut c2));
            let f = f.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    if f.load(Ordering::Relaxed) {
                        // The ingest drops its side (as a real one times the
                        // session out); toward the worker the connection stays
                        // open and nothing is read, for good.
                        let _ = server.shutdown(std::net::Shutdown::Both);
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if server.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, freeze)
}

#[test]
fn a_destination_that_stops_reading_times_out_alone() {
    let dir = tempfile::tempdir().unwrap();
    let a = Nginx::start(&dir.path().join("a"), free_tcp_port());
    let b = Nginx::start(&dir.path().join("b"), free_tcp_port());
    let (proxy, freeze) = freezing_proxy(b.port);
    let outputs = format!(
        r#"[{{"id":"a","url":"rtmp://127.0.0.1:{}/live/ka"}},{{"id":"b","url":"rtmp://127.0.0.1:{proxy}/live/kb"}}]"#,
        a.port
    );
    let mut w = Worker::start(dir.path(), 2, &outputs, &[]);
    let _feeder = Feeder::start(&w.ports, pattern(45), false);
    assert!(
        w.wait_for(Duration::from_secs(8), |v| v["event"] == "stats"
            && v["outputs"][1]["state"] == "live")
            .is_some(),
        "b never went live"
    );
    freeze.store(true, Ordering::Relaxed);
    let failed = w.wait_for(Duration::from_secs(30), |v| {
        v["event"] == "stats" && v["outputs"][1]["reconnects"].as_u64() > Some(0)
    });
    let failed = failed.expect("b never gave up on the frozen connection");
    let why = failed["outputs"][1]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("took no data"), "{failed}");
    assert!(
        failed["bitrate_in_kbps"].as_f64() > Some(500.0),
        "the input slowed down: {failed}"
    );
    // The next connection through the proxy is not frozen: b comes back.
    assert!(
        w.wait_for(Duration::from_secs(10), |v| v["event"] == "stats"
            && v["outputs"][1]["state"] == "live")
            .is_some(),
        "b did not come back"
    );
    w.stop_with_output_untouched(0);
    let (_, dur) = a.only_recording();
    assert!(dur >= 15.0, "a recorded {dur} s");
}
