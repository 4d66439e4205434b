//! The local status page (`[status_page] listen`): for the owner on the same
//! network as the device, the enrollment QR code and user code while the
//! device waits to be claimed, then its id, the control channel and each
//! link's numbers. Plain HTML that refreshes itself. It holds no stream
//! secret (the view below has no field that could carry one), but while the
//! device is unclaimed its link lets whoever opens it first claim the
//! device: listen on loopback or a network only the owner uses.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// What the page shows.
#[derive(Debug, Clone, Default)]
pub struct StatusView {
    /// Waiting to be claimed: (user code, verification URL).
    pub pending: Option<(String, String)>,
    /// The id the relay gave the device.
    pub device_id: Option<String>,
    /// The control channel is up.
    pub connected: bool,
    /// The stream being sent.
    pub streaming: Option<String>,
    /// Per link: name, state, kbit/s, RTT ms.
    pub links: Vec<(String, String, u32, u32)>,
}

/// The view, shared between the agent and the page.
pub type SharedView = Arc<Mutex<StatusView>>;

/// Serves the page on `listen` until the task is dropped; returns the bound address.
pub async fn serve(listen: SocketAddr, view: SharedView) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("status page on {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // Out of descriptors and the like: wait rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let view = view.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| page(req, view.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    tracing::info!(%bound, "status page");
    Ok(bound)
}

async fn page(
    req: Request<hyper::body::Incoming>,
    view: SharedView,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/" {
        return Ok(Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found\n")))
            .expect("static response"));
    }
    let v = view.lock().expect("status view").clone();
    Ok(Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(render(&v))))
        .expect("static headers"))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page's HTML.
pub fn render(v: &StatusView) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>Strata device</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:2em auto\"><h1>Strata device</h1>",
    );
    if let Some((code, url)) = &v.pending {
        let _ = write!(
            h,
            "<h2>Enroll this device</h2><p>Scan the code or open <a href=\"{u}\">{u}</a>, log in, \
             and check that the relay shows the code <strong>{c}</strong>.</p>",
            u = escape(url),
            c = escape(code)
        );
        if let Some(svg) = crate::enrollment::qr_svg(url) {
            h.push_str(&svg);
        }
    }
    if let Some(id) = &v.device_id {
        let _ = write!(
            h,
            "<p>Device <code>{}</code>; control channel {}; {}</p>",
            escape(id),
            if v.connected { "up" } else { "down" },
            match &v.streaming {
                Some(s) => format!("streaming <code>{}</code>", escape(s)),
                None => "not streaming".into(),
            }
        );
    }
    if !v.links.is_empty() {
        h.push_str("<table><tr><th>Link</th><th>State</th><th>kbit/s</th><th>RTT ms</th></tr>");
        for (name, state, kbps, rtt) in &v.links {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{kbps}</td><td>{rtt}</td></tr>",
                escape(name),
                escape(state)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shows_the_code_then_the_links() {
        let view = SharedView::default();
        let at = serve("127.0.0.1:0".parse().unwrap(), view.clone())
            .await
            .unwrap();
        view.lock().unwrap().pending = Some((
            "BCDF-GHJK".into(),
            "https://relay.example/claim?code=BCDF-GHJK".into(),
        ));
        let get = |path: &'static str| async move {
            let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
            let (mut s, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let resp = s
                .send_request(Request::get(path).body(Full::default()).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        let (status, html) = get("/").await;
        assert_eq!(status, 200);
        assert!(
            html.contains("BCDF-GHJK") && html.contains("<svg"),
            "{html}"
        );

        *view.lock().unwrap() = StatusView {
            device_id: Some("dev-1".into()),
            connected: true,
            links: vec![("wwan0".into(), "Up".into(), 1800, 42)],
            ..Default::default()
        };
        let (_, html) = get("/").await;
        assert!(html.contains("wwan0") && html.contains("control channel up"));
        assert!(!html.contains("<svg"));
        assert_eq!(get("/secrets").await.0, 404);
        assert!(
            render(&StatusView {
                links: vec![("<script>".into(), "x".into(), 0, 0)],
                ..Default::default()
            })
            .contains("&lt;script&gt;")
        );
    }
}
