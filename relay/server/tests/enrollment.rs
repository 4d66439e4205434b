//! Enrollment end to end over HTTP (RFC 8628 shape): a device asks with its
//! CSR, the owner claims it on the page its QR code opens, the device
//! collects its certificate once. Refusals: expired, reused and wrong codes,
//! claiming into an organization one may not add devices to, denial, brute
//! force. On SQLite and PostgreSQL.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use rcgen::KeyPair;
use strata_proto::enrollment::{
    DeviceAuthorizationResponse, DeviceCredentials, GRANT_TYPE, TokenError,
};
use strata_relay::store::accounts::Role;
use support::{TestApp, test_databases};

fn csr() -> String {
    support::device::csr(&KeyPair::generate().unwrap())
}

fn json(path: &str, body: String) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

async fn authorize(app: &TestApp, csr: &str) -> DeviceAuthorizationResponse {
    let body = serde_json::json!({"csr_pem": csr, "facts": {"model": "Orange Pi 5 Plus", "hostname": "van-7", "agent_version": "0.1.0"}});
    let (status, _, text) = app
        .send(json("/enroll/device/authorize", body.to_string()))
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn poll(app: &TestApp, device_code: &str) -> Result<DeviceCredentials, TokenError> {
    let body = serde_json::json!({"grant_type": GRANT_TYPE, "device_code": device_code});
    let (status, _, text) = app
        .send(json("/enroll/device/token", body.to_string()))
        .await;
    if status == StatusCode::OK {
        Ok(serde_json::from_str(&text).unwrap())
    } else {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        Err(serde_json::from_str(&text).unwrap())
    }
}

async fn age_poll(app: &TestApp) {
    // Pretend the device waited its interval.
    sqlx::query("UPDATE enrollments SET last_poll_at = last_poll_at - 10000")
        .execute(&app.state.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn device_asks_owner_claims_device_collects_once() {
    for db in test_databases().await {
        let app = TestApp::with(&db, |c| c.public_url = "https://relay.example.com".into()).await;
        let org = app.org("Acme").await;
        let op = app.member(&org, "op@example.com", Role::Operator).await;
        let b = app.browser(&op).await;

        let auth = authorize(&app, &csr()).await;
        assert_eq!(auth.verification_uri, "https://relay.example.com/claim");
        assert_eq!(
            auth.verification_uri_complete,
            format!("https://relay.example.com/claim?code={}", auth.user_code)
        );
        assert_eq!((auth.expires_in, auth.interval), (600, 5));
        assert_eq!(
            poll(&app, &auth.device_code).await.unwrap_err().error,
            "authorization_pending"
        );
        assert_eq!(
            poll(&app, &auth.device_code).await.unwrap_err().error,
            "slow_down",
            "polled too fast"
        );

        // Not logged in: the QR code's page sends the owner to log in and back.
        let claim_url = format!("/claim?code={}", auth.user_code);
        let (status, headers, _) = app
            .send(Request::get(&claim_url).body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let to = headers[header::LOCATION].to_str().unwrap();
        assert!(to.starts_with("/login?next=%2Fclaim%3Fcode%3D"), "{to}");

        let (status, _, html) = app.send(b.get(&claim_url)).await;
        assert_eq!(status, StatusCode::OK, "[{}]", app.label);
        assert!(
            html.contains("Orange Pi 5 Plus") && html.contains(&auth.user_code),
            "facts and code shown"
        );
        let form = format!(
            "code={}&org={}&name=Van+7&decision=approve",
            auth.user_code, org.id
        );
        let (status, headers, body) = app.send(b.post("/claim", &form)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let sender_page = headers[header::LOCATION].to_str().unwrap().to_string();

        age_poll(&app).await;
        let creds = poll(&app, &auth.device_code).await.expect("credentials");
        assert_eq!(
            sender_page,
            format!("/o/{}/senders/{}", org.id, creds.device_id)
        );
        assert!(strata_proto::topic::valid_device_id(&creds.device_id));
        assert_eq!(creds.ca_pem, app.state.ca.ca_pem());
        assert_eq!(creds.broker.host, "relay.example.com");
        let der = pem::parse(&creds.certificate_chain_pem)
            .unwrap()
            .into_contents();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            creds.device_id
        );
        let (_, _, page) = app.send(b.get(&sender_page)).await;
        assert!(
            page.contains("Van 7"),
            "the sender exists in the organization"
        );

        // Single use: the device code and the user code are spent.
        age_poll(&app).await;
        assert_eq!(
            poll(&app, &auth.device_code).await.unwrap_err().error,
            "invalid_grant"
        );
        let (status, _, body) = app.send(b.post("/claim", &form)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("No device is waiting with this code"));
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM senders")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}

#[tokio::test]
async fn refusals() {
    for db in test_databases().await {
        let app = TestApp::new(&db).await;
        let acme = app.org("Acme").await;
        let other = app.org("Other").await;
        let op = app.member(&acme, "op@example.com", Role::Operator).await;
        let viewer = app.member(&acme, "viewer@example.com", Role::Viewer).await;
        let b = app.browser(&op).await;
        let senders = || async {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM senders")
                .fetch_one(&app.state.db)
                .await
                .unwrap();
            n
        };

        // Wrong code, and a code shaped wrong.
        let (status, _, body) = app.send(b.get("/claim?code=BCDF-GHJK")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("No device is waiting"));
        assert_eq!(
            app.send(b.get("/claim?code=123")).await.0,
            StatusCode::BAD_REQUEST
        );

        // Into an organization the user is not in: refused, nothing written.
        let auth = authorize(&app, &csr()).await;
        let form = format!(
            "code={}&org={}&name=x&decision=approve",
            auth.user_code, other.id
        );
        let (status, _, body) = app.send(b.post("/claim", &form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("operator or owner"));
        // A viewer may not add devices either.
        let vb = app.browser(&viewer).await;
        let form = format!(
            "code={}&org={}&name=x&decision=approve",
            auth.user_code, acme.id
        );
        assert_eq!(
            app.send(vb.post("/claim", &form)).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(senders().await, 0);
        assert_eq!(
            poll(&app, &auth.device_code).await.unwrap_err().error,
            "authorization_pending"
        );

        // Nor turn it away.
        let (status, _, _) = app
            .send(vb.post("/claim", &format!("code={}&decision=deny", auth.user_code)))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            poll(&app, &auth.device_code).await.unwrap_err().error,
            "slow_down",
            "still pending"
        );

        // Denied: the device is told so.
        let (status, _, _) = app
            .send(b.post("/claim", &format!("code={}&decision=deny", auth.user_code)))
            .await;
        assert_eq!(status, StatusCode::OK);
        age_poll(&app).await;
        assert_eq!(
            poll(&app, &auth.device_code).await.unwrap_err().error,
            "access_denied"
        );

        // Expired.
        let late = authorize(&app, &csr()).await;
        sqlx::query("UPDATE enrollments SET expires_at = 0 WHERE state = 'pending'")
            .execute(&app.state.db)
            .await
            .unwrap();
        let form = format!(
            "code={}&org={}&name=x&decision=approve",
            late.user_code, acme.id
        );
        assert_eq!(
            app.send(b.post("/claim", &form)).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            poll(&app, &late.device_code).await.unwrap_err().error,
            "expired_token"
        );
        assert_eq!(senders().await, 0);

        // Unknown device code, wrong grant type, bad CSR, malformed JSON.
        assert_eq!(poll(&app, "nope").await.unwrap_err().error, "invalid_grant");
        let body = serde_json::json!({"grant_type": "password", "device_code": "x"}).to_string();
        let (_, _, text) = app.send(json("/enroll/device/token", body)).await;
        assert!(text.contains("unsupported_grant_type"));
        let facts = serde_json::json!({"model": "m", "hostname": "h", "agent_version": "1"});
        let (status, _, text) = app
            .send(json(
                "/enroll/device/authorize",
                serde_json::json!({"csr_pem": "garbage", "facts": facts}).to_string(),
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("signing request is not valid"), "{text}");
        let (status, _, _) = app.send(json("/enroll/device/authorize", "{".into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let bad_facts = serde_json::json!({"csr_pem": csr(), "facts": {"model": "", "hostname": "h", "agent_version": "1"}});
        assert_eq!(
            app.send(json("/enroll/device/authorize", bad_facts.to_string()))
                .await
                .0,
            StatusCode::BAD_REQUEST
        );

        // Brute force: guesses are limited per user.
        let mut limited = false;
        for _ in 0..15 {
            if app.send(b.get("/claim?code=BCDF-GHJK")).await.0 == StatusCode::TOO_MANY_REQUESTS {
                limited = true;
                break;
            }
        }
        assert!(limited, "user-code guesses are rate limited");
    }
}

#[tokio::test]
async fn login_returns_to_the_claim_page_and_only_to_local_paths() {
    for db in test_databases().await {
        let app = TestApp::new(&db).await;
        let org = app.org("Acme").await;
        let hash = strata_relay::auth::hash_password("correct horse battery");
        let user =
            strata_relay::store::accounts::create_user(&app.state.db, "ann@example.com", &hash)
                .await
                .unwrap();
        strata_relay::store::accounts::add_member(&app.state.db, &org.id, &user.id, Role::Owner)
            .await
            .unwrap();
        for (next, expect) in [
            ("/claim?code=BCDF-GHJK", "/claim?code=BCDF-GHJK"),
            ("//evil.example/x", "/"),
            ("https://evil.example/", "/"),
        ] {
            let pre = "pre-cookie-value";
            let csrf = app.state.csrf.token("p", pre);
            let body = format!(
                "email=ann%40example.com&password=correct+horse+battery&_csrf={csrf}&next={}",
                form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            );
            let req = Request::post("/login")
                .header(header::COOKIE, format!("__Host-strata_pre={pre}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap();
            let (status, headers, _) = app.send(req).await;
            assert_eq!(status, StatusCode::SEE_OTHER);
            assert_eq!(headers[header::LOCATION], expect, "next={next}");
        }
    }
}
