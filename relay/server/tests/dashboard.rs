//! The dashboard and API end to end through the router, on SQLite and
//! PostgreSQL: login, sessions, CSRF, rate limit, secrets at rest, tokens,
//! bad input, live updates.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use strata_relay::auth::hash_password;
use strata_relay::store::accounts::{self, Role};
use strata_relay::store::senders::{self, Inventory, LinkSample};
use support::{TestApp, api, test_databases};

fn cookie_value(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.to_string())
        })
}

fn set_cookie_line(headers: &axum::http::HeaderMap, name: &str) -> String {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_default()
        .to_string()
}

fn csrf_in(html: &str) -> String {
    let i = html
        .find("name=\"_csrf\" value=\"")
        .expect("page has a CSRF field")
        + 20;
    html[i..i + 64].to_string()
}

async fn count(app: &TestApp, table: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    n
}

fn login_request(pre: &str, csrf: &str, email: &str, password: &str) -> Request<Body> {
    let body = format!(
        "email={}&password={}&_csrf={csrf}",
        email.replace('@', "%40"),
        password.replace(' ', "+")
    );
    Request::post("/login")
        .header(header::COOKIE, format!("__Host-strata_pre={pre}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn login_sessions_csrf_and_rate_limit() {
    for db in test_databases().await {
        let app = TestApp::with(&db, |c| c.login_attempts_per_minute = 4).await;
        let org = app.org("Acme").await;
        let user = accounts::create_user(
            &app.state.db,
            "ann@example.com",
            &hash_password("correct horse battery"),
        )
        .await
        .unwrap();
        accounts::add_member(&app.state.db, &org.id, &user.id, Role::Owner)
            .await
            .unwrap();

        // The login page hands out a pre-session cookie and a token bound to it.
        let (status, headers, html) = app
            .send(Request::get("/login").body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        let pre = cookie_value(&headers, "__Host-strata_pre").expect("pre-session cookie");
        let csrf = csrf_in(&html);

        // No token, or a token for another cookie: refused before the password is looked at.
        let (status, _, body) = app
            .send(login_request(
                &pre,
                "",
                "ann@example.com",
                "correct horse battery",
            ))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{}", app.label);
        assert!(body.contains("reload the page"), "{body}");
        let other_csrf = app.state.csrf.token("p", "another-cookie");
        let (status, _, _) = app
            .send(login_request(
                &pre,
                &other_csrf,
                "ann@example.com",
                "correct horse battery",
            ))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(count(&app, "sessions").await, 0);

        // Wrong password, unknown account: the same answer.
        let (status, _, body) = app
            .send(login_request(
                &pre,
                &csrf,
                "ann@example.com",
                "wrong horse battery",
            ))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("Wrong email or password"));
        let (status, _, body2) = app
            .send(login_request(
                &pre,
                &csrf,
                "nobody@example.com",
                "wrong horse battery",
            ))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body2.contains("Wrong email or password"));

        // Right password: a session cookie with every protective attribute.
        let (status, headers, _) = app
            .send(login_request(
                &pre,
                &csrf,
                "ann@example.com",
                "correct horse battery",
            ))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{}", app.label);
        let line = set_cookie_line(&headers, "__Host-strata_session");
        for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(line.contains(attr), "session cookie lacks {attr}: {line}");
        }
        let session = cookie_value(&headers, "__Host-strata_session").unwrap();
        let (n_hash,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM sessions WHERE token_hash = $1")
                .bind(&session)
                .fetch_one(&app.state.db)
                .await
                .unwrap();
        assert_eq!(
            n_hash, 0,
            "the database holds the session's hash, not the session"
        );
        let get = |path: &str| {
            Request::get(path)
                .header(header::COOKIE, format!("__Host-strata_session={session}"))
                .body(Body::empty())
                .unwrap()
        };
        let (status, headers, _) = app.send(get("/")).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], format!("/o/{}/senders", org.id));
        let (status, _, html) = app.send(get(&format!("/o/{}/senders", org.id))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("ann@example.com"));
        let csrf = csrf_in(&html);

        // Logout needs the token too, and ends the session.
        let logout = |csrf: &str| {
            Request::post("/logout")
                .header(header::COOKIE, format!("__Host-strata_session={session}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("_csrf={csrf}")))
                .unwrap()
        };
        assert_eq!(
            app.send(logout("0".repeat(64).as_str())).await.0,
            StatusCode::FORBIDDEN
        );
        let (status, headers, _) = app.send(logout(&csrf)).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        // The deletion carries the attributes a browser needs to honour it for a __Host- cookie.
        let removal = set_cookie_line(&headers, "__Host-strata_session");
        for attr in ["Secure", "Path=/", "Max-Age=0"] {
            assert!(
                removal.contains(attr),
                "session removal lacks {attr}: {removal}"
            );
        }
        let (status, headers, _) = app.send(get(&format!("/o/{}/senders", org.id))).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/login");

        // A browser that still sends the dead session cookie can log in again
        // (the login form's token is bound to the pre-session cookie).
        let relogin = Request::post("/login")
            .header(
                header::COOKIE,
                format!("__Host-strata_session={session}; __Host-strata_pre={pre}"),
            )
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!(
                "email=ann%40example.com&password=correct+horse+battery&_csrf={}",
                app.state.csrf.token("p", &pre)
            )))
            .unwrap();
        assert_eq!(
            app.send(relogin).await.0,
            StatusCode::SEE_OTHER,
            "log in again after logout"
        );

        // Rate limit: 4 attempts a minute for this account (3 used above), then 429 even with the right password.
        let (status, _, _) = app
            .send(login_request(
                &pre,
                &app.state.csrf.token("p", &pre),
                "ann@example.com",
                "wrong horse battery",
            ))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, body) = app
            .send(login_request(
                &pre,
                &app.state.csrf.token("p", &pre),
                "ann@example.com",
                "correct horse battery",
            ))
            .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", app.label);
        assert!(body.contains("Too many attempts"));
    }
}

#[tokio::test]
async fn destination_keys_are_write_only_and_encrypted_at_rest() {
    for db in test_databases().await {
        let app = TestApp::new(&db).await;
        let org = app.org("Acme").await;
        let op = app.member(&org, "op@example.com", Role::Operator).await;
        let b = app.browser(&op).await;
        let key = "live_9f8e7d6c5b4a3921";
        let form = format!(
            "name=YouTube&kind=rtmp&target=rtmp%3A%2F%2Fa.rtmp.youtube.com%2Flive2&secret={key}"
        );

        // Without the CSRF token nothing is written.
        let (status, _, _) = app
            .send(b.post_raw(&format!("/o/{}/destinations", org.id), form.clone()))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(count(&app, "destinations").await, 0);

        let (status, _, _) = app
            .send(b.post(&format!("/o/{}/destinations", org.id), &form))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{}", app.label);
        let (_, _, html) = app
            .send(b.get(&format!("/o/{}/destinations", org.id)))
            .await;
        assert!(
            html.contains("YouTube") && html.contains("••••••••3921"),
            "masked key shown"
        );
        assert!(!html.contains(key), "the key is never shown again");

        let token = app.token(&org, &op, Role::Operator).await;
        let (_, _, json) = app
            .send(api(
                "GET",
                &format!("/api/v1/o/{}/destinations", org.id),
                &token,
                None,
            ))
            .await;
        assert!(
            json.contains("\"secret_hint\":\"3921\"") && !json.contains(key),
            "{json}"
        );

        // Not in the database in clear.
        let (stored,): (String,) = sqlx::query_as("SELECT secret_enc FROM destinations")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        assert!(!stored.contains(key));
        if app.label == "sqlite" {
            // Checkpoint so the file, not only the WAL, holds the row, then read both.
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&app.state.db)
                .await
                .unwrap();
            let dir = db.dir.path();
            let mut bytes = std::fs::read(dir.join("strata.db")).unwrap();
            bytes.extend(std::fs::read(dir.join("strata.db-wal")).unwrap_or_default());
            assert!(
                bytes.windows(4).any(|w| w == b"live"),
                "the file holds the destination row"
            );
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "stream key in clear in the database file"
            );
        }
        // The worker side can still get it back.
        let id: (String,) = sqlx::query_as("SELECT id FROM destinations")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        let plain = strata_relay::store::destinations::secret(
            &app.state.db,
            &app.state.sbox,
            &org.id,
            &id.0,
        )
        .await
        .unwrap();
        assert_eq!(plain.as_deref(), Some(key));

        // An edit with an empty key keeps it while the server stays; moving the
        // destination to another server needs the key again (else the stored key
        // would be sent somewhere its owner never sent it).
        let edit =
            "name=YouTube+backup&kind=rtmp&target=rtmp%3A%2F%2Fa.rtmp.youtube.com%2Flive2&secret=";
        assert_eq!(
            app.send(b.post(&format!("/o/{}/destinations/{}", org.id, id.0), edit))
                .await
                .0,
            StatusCode::SEE_OTHER
        );
        let plain = strata_relay::store::destinations::secret(
            &app.state.db,
            &app.state.sbox,
            &org.id,
            &id.0,
        )
        .await
        .unwrap();
        assert_eq!(plain.as_deref(), Some(key));
        let moved =
            "name=YouTube+backup&kind=rtmp&target=rtmp%3A%2F%2Fevil.example%2Flive2&secret=";
        let (status, _, body) = app
            .send(b.post(&format!("/o/{}/destinations/{}", org.id, id.0), moved))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("needs a stream key"), "{body}");
        let (target,): (String,) = sqlx::query_as("SELECT target FROM destinations")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        assert_eq!(
            target, "rtmp://a.rtmp.youtube.com/live2",
            "refused edit wrote nothing"
        );
        // Turned into a recording: the key is dropped.
        let rec = "name=Archive&kind=record&target=60&secret=";
        assert_eq!(
            app.send(b.post(&format!("/o/{}/destinations/{}", org.id, id.0), rec))
                .await
                .0,
            StatusCode::SEE_OTHER
        );
        let plain = strata_relay::store::destinations::secret(
            &app.state.db,
            &app.state.sbox,
            &org.id,
            &id.0,
        )
        .await
        .unwrap();
        assert_eq!(plain, None);
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() {
    for db in test_databases().await {
        let app = TestApp::new(&db).await;
        let org = app.org("Acme").await;
        let owner = app.member(&org, "owner@example.com", Role::Owner).await;
        let b = app.browser(&owner).await;
        let token = app.token(&org, &owner, Role::Owner).await;
        let dests = format!("/o/{}/destinations", org.id);

        // Oversized form.
        let big = format!("name={}&kind=hls&target=4", "x".repeat(100 * 1024));
        let (status, _, body) = app.send(b.post(&dests, &big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", app.label);
        assert!(body.contains("too large"));
        // Malformed: a field missing, a number that is not one.
        let (status, _, body) = app.send(b.post(&dests, "name=x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("kind"), "{body}");
        let sid = senders::create(&app.state.db, &org.id, "cam", &Inventory::default())
            .await
            .unwrap();
        let (status, _, _) = app
            .send(b.post(
                &format!("/o/{}/senders/{sid}/settings", org.id),
                "input=test&codec=h264&height=lots&fps=30&min_kbps=1&max_kbps=2",
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // Valid shape, invalid values: the page says which.
        let (status, _, body) = app
            .send(b.post(
                &format!("/o/{}/senders/{sid}/settings", org.id),
                "input=test&codec=h264&height=720&fps=30&min_kbps=5000&max_kbps=1000",
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("minimum bitrate is above the maximum"));
        let (status, _, body) = app
            .send(b.post(&dests, "name=x&kind=gopher&target=y"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("kind must be rtmp, srt, hls or record"));
        assert_eq!(count(&app, "destinations").await, 0);
        let (settings,): (String,) = sqlx::query_as("SELECT settings FROM senders")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        assert!(
            settings.contains("\"max_kbps\":6000"),
            "settings unchanged: {settings}"
        );

        // SQL-looking and HTML-looking input is data, stored and shown literally.
        let evil = "Robert'); DROP TABLE destinations;-- <script>alert(1)</script>";
        let form = format!("name={}&kind=hls&target=4", urlencode(evil));
        assert_eq!(
            app.send(b.post(&dests, &form)).await.0,
            StatusCode::SEE_OTHER
        );
        let (_, _, html) = app.send(b.get(&dests)).await;
        assert!(
            html.contains(
                "Robert&#39;); DROP TABLE destinations;-- &#60;script&#62;alert(1)&#60;/script&#62;"
            ),
            "shown escaped"
        );
        assert!(!html.contains("<script>alert(1)"));
        assert_eq!(count(&app, "destinations").await, 1);

        // Unknown ids: 404 pages and JSON errors.
        let (status, _, body) = app
            .send(b.get(&format!("/o/{}/senders/nope", org.id)))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("404"));
        assert_eq!(
            app.send(b.get("/o/nope/senders")).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            app.send(b.post(&format!("{dests}/nope/delete"), ""))
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            app.send(b.get("/no/such/page")).await.0,
            StatusCode::NOT_FOUND
        );
        let (status, _, json) = app
            .send(api(
                "DELETE",
                &format!("/api/v1/o/{}/destinations/nope", org.id),
                &token,
                None,
            ))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(json.contains("\"error\""));

        // API: malformed JSON, unknown fields, wrong types, bad values.
        for bad in [
            "{",
            "{\"name\":\"x\",\"kind\":\"hls\",\"target\":\"4\",\"admin\":true}",
            "{\"name\":1}",
            "{\"name\":\"x\",\"kind\":\"rtmp\",\"target\":\"rtmp://h/app\"}",
        ] {
            let (status, _, json) = app
                .send(api(
                    "POST",
                    &format!("/api/v1/o/{}/destinations", org.id),
                    &token,
                    Some(bad),
                ))
                .await;
            assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
                "{bad}: {status}"
            );
            assert!(json.starts_with("{\"error\":"), "{json}");
        }
        assert_eq!(count(&app, "destinations").await, 1);
        // Wrong and missing tokens.
        assert_eq!(
            app.send(api(
                "GET",
                &format!("/api/v1/o/{}/senders", org.id),
                "strata_wrong",
                None
            ))
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            app.send(api(
                "GET",
                &format!("/api/v1/o/{}/senders", org.id),
                "",
                None
            ))
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );

        // The last owner cannot leave.
        let (status, _, body) = app
            .send(b.post(
                &format!("/o/{}/members/{}", org.id, owner.id),
                "role=viewer",
            ))
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(body.contains("at least one owner"));
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn api_tokens_are_shown_once_and_stored_hashed() {
    for db in test_databases().await {
        let app = TestApp::new(&db).await;
        let org = app.org("Acme").await;
        let owner = app.member(&org, "owner@example.com", Role::Owner).await;
        let b = app.browser(&owner).await;
        let (status, headers, html) = app
            .send(b.post(
                &format!("/o/{}/tokens", org.id),
                "name=deploy&role=operator",
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let i = html.find("id=\"new-token\">").unwrap() + 15;
        let secret: String = html[i..].chars().take_while(|c| *c != '<').collect();
        assert!(
            secret.starts_with("strata_") && secret.len() > 40,
            "{secret}"
        );
        let (stored,): (String,) = sqlx::query_as("SELECT token_hash FROM api_tokens")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        assert_ne!(stored, secret);
        assert!(!stored.contains(&secret[7..]));
        let (_, _, page) = app.send(b.get(&format!("/o/{}/tokens", org.id))).await;
        assert!(
            page.contains("deploy") && !page.contains(&secret),
            "listed without its secret"
        );

        // It works for the API, at its role.
        let path = format!("/api/v1/o/{}/senders", org.id);
        assert_eq!(
            app.send(api("GET", &path, &secret, None)).await.0,
            StatusCode::OK
        );
        assert_eq!(
            app.send(api(
                "GET",
                &format!("/api/v1/o/{}/tokens", org.id),
                &secret,
                None
            ))
            .await
            .0,
            StatusCode::FORBIDDEN
        );
        // A token cannot drive the dashboard, nor a session cookie the API.
        let req = Request::get(format!("/o/{}/senders", org.id))
            .header(header::AUTHORIZATION, format!("Bearer {secret}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.send(req).await.0, StatusCode::SEE_OTHER);
        assert_eq!(app.send(b.get(&path)).await.0, StatusCode::UNAUTHORIZED);

        // Revoked: refused at once.
        let (id,): (String,) = sqlx::query_as("SELECT id FROM api_tokens")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        assert_eq!(
            app.send(b.post(&format!("/o/{}/tokens/{id}/revoke", org.id), ""))
                .await
                .0,
            StatusCode::SEE_OTHER
        );
        assert_eq!(
            app.send(api("GET", &path, &secret, None)).await.0,
            StatusCode::UNAUTHORIZED
        );

        // A token of a member who was removed stops working; a demoted member's token is demoted.
        let op = app.member(&org, "op@example.com", Role::Operator).await;
        let t = app.token(&org, &op, Role::Operator).await;
        let dest = format!("/api/v1/o/{}/destinations", org.id);
        let body = r#"{"name":"rec","kind":"record","target":"60"}"#;
        assert_eq!(
            app.send(api("POST", &dest, &t, Some(body))).await.0,
            StatusCode::CREATED
        );
        // Through the dashboard: the change must reach the (cached) token at once.
        let members = format!("/o/{}/members/{}", org.id, op.id);
        assert_eq!(
            app.send(b.post(&members, "role=viewer")).await.0,
            StatusCode::SEE_OTHER
        );
        assert_eq!(
            app.send(api("POST", &dest, &t, Some(body))).await.0,
            StatusCode::FORBIDDEN
        );
        let t2 = app.token(&org, &op, Role::Viewer).await;
        assert_eq!(
            app.send(b.post(&members, "role=remove")).await.0,
            StatusCode::SEE_OTHER
        );
        assert_eq!(
            app.send(api("GET", &path, &t2, None)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn live_values_openapi_metrics_health() {
    for db in test_databases().await {
        let app = TestApp::new(&db).await;
        let org = app.org("Acme").await;
        let viewer = app.member(&org, "v@example.com", Role::Viewer).await;
        let b = app.browser(&viewer).await;
        let sid = senders::create(&app.state.db, &org.id, "van-1", &Inventory::default())
            .await
            .unwrap();
        let now = strata_relay::now_ms();
        let samples: Vec<LinkSample> = ["wwan0", "wwan1"]
            .iter()
            .enumerate()
            .map(|(i, l)| LinkSample {
                ts: now - 1000,
                link: l.to_string(),
                kbps: 1500 + i as i64 * 500,
                rtt_ms: 45,
                loss_permille: 3,
                retransmit_permille: 5 + i as i64,
            })
            .collect();
        senders::record_telemetry(&app.state.db, &sid, &samples)
            .await
            .unwrap();
        senders::set_presence(&app.state.db, &sid, true, now)
            .await
            .unwrap();

        // The page renders what the database holds.
        let (_, _, html) = app
            .send(b.get(&format!("/o/{}/senders/{sid}", org.id)))
            .await;
        assert!(html.contains("wwan1: 2000 kbit/s, 45 ms"), "chart legend");
        // Loss and retransmissions, two figures per link.
        assert!(
            html.contains("wwan1: 2000 kbit/s, 45 ms, 3‰ loss, 6‰ retransmitted"),
            "chart legend: {html}"
        );
        assert!(html.contains("sse-connect=\"/o/"));

        // The live stream sends fresh fragments.
        let resp = tower::ServiceExt::oneshot(
            app.router.clone(),
            b.get(&format!("/o/{}/senders/{sid}/live", org.id)),
        )
        .await
        .unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        senders::set_presence(&app.state.db, &sid, false, now)
            .await
            .unwrap();
        let mut body = resp.into_body();
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(text.contains("event: chart") && text.contains("offline")) {
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .expect("events within 10 s")
                .unwrap()
                .unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        assert!(
            text.contains("event: status") && text.contains("wwan0"),
            "{text}"
        );

        let (status, _, doc) = app
            .send(
                Request::get("/api/openapi.json")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert!(doc["paths"]["/api/v1/o/{org}/destinations"]["post"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );

        let (status, _, metrics) = app
            .send(Request::get("/metrics").body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(metrics.contains("strata_relay_senders 1"), "{metrics}");
        assert!(
            metrics.contains("strata_relay_http_requests_total{method=\"GET\",status=\"2xx\"}")
        );
        let (status, _, ok) = app
            .send(Request::get("/healthz").body(Body::empty()).unwrap())
            .await;
        assert_eq!((status, ok.as_str()), (StatusCode::OK, "ok\n"));
        let (status, headers, _) = app
            .send(
                Request::get("/static/htmx-2.0.11.min.js")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
    }
}

#[tokio::test]
async fn streams_page_shows_live_and_ended_streams_with_destination_health() {
    for db in test_databases().await {
        let app = TestApp::new(&db).await;
        let org = app.org("Acme").await;
        let viewer = app.member(&org, "v@example.com", Role::Viewer).await;
        let b = app.browser(&viewer).await;
        let sid = senders::create(&app.state.db, &org.id, "van-1", &Inventory::default())
            .await
            .unwrap();
        let dests = [("d1".to_string(), "YouTube main".to_string())];
        let stream = strata_relay::store::streams::create(&app.state.db, &org.id, &sid, &dests)
            .await
            .unwrap();
        let (_, _, html) = app.send(b.get(&format!("/o/{}/streams", org.id))).await;
        assert!(
            html.contains("van-1") && html.contains("starting"),
            "live stream listed"
        );
        assert!(
            html.contains("YouTube main: <span class=\"badge connecting\">connecting</span>"),
            "destination health"
        );
        let (_, _, list) = app.send(b.get(&format!("/o/{}/senders", org.id))).await;
        assert!(list.contains("badge live"), "the sender shows its stream");

        strata_relay::store::streams::finish(
            &app.state.db,
            &org.id,
            &stream,
            "ended",
            "stopped from the dashboard",
        )
        .await
        .unwrap();
        let (_, _, html) = app.send(b.get(&format!("/o/{}/streams", org.id))).await;
        assert!(
            html.contains("badge ended") && html.contains("stopped from the dashboard"),
            "history with its reason"
        );
        // Another organization sees none of it.
        let other = app.org("Other").await;
        let stranger = app.member(&other, "s@example.com", Role::Owner).await;
        let (_, _, html) = app
            .send(
                app.browser(&stranger)
                    .await
                    .get(&format!("/o/{}/streams", other.id)),
            )
            .await;
        assert!(html.contains("No streams yet") && !html.contains("van-1"));
    }
}

#[tokio::test]
async fn registration_when_open_and_password_change() {
    for db in test_databases().await {
        let closed = TestApp::new(&db).await;
        assert_eq!(
            closed
                .send(Request::get("/register").body(Body::empty()).unwrap())
                .await
                .0,
            StatusCode::NOT_FOUND
        );

        let app = TestApp::with(&db, |c| c.registration_open = true).await;
        let (status, headers, html) = app
            .send(Request::get("/register").body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        let pre = cookie_value(&headers, "__Host-strata_pre").unwrap();
        let csrf = csrf_in(&html);
        let register = |form: String| {
            Request::post("/register")
                .header(header::COOKIE, format!("__Host-strata_pre={pre}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("{form}&_csrf={csrf}")))
                .unwrap()
        };
        let (status, _, body) = app
            .send(register(
                "email=new%40example.com&organization=NewCo&password=short".into(),
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("at least 10 characters"));
        let (status, headers, _) = app
            .send(register(
                "email=new%40example.com&organization=NewCo&password=correct+horse+battery".into(),
            ))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let session = cookie_value(&headers, "__Host-strata_session").expect("logged in");
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM memberships WHERE role = 'owner'")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        assert_eq!(n, 1, "owner of the new organization");
        let (status, _, _) = app
            .send(register(
                "email=new%40example.com&organization=Again&password=correct+horse+battery".into(),
            ))
            .await;
        assert_eq!(status, StatusCode::CONFLICT);

        // Password change: the current one is checked; other sessions end.
        let user = strata_relay::store::accounts::user_by_email(&app.state.db, "new@example.com")
            .await
            .unwrap()
            .unwrap()
            .0;
        let other_session = strata_relay::store::sessions::create(&app.state.db, &user.id, 1)
            .await
            .unwrap();
        let change = |form: &str| {
            Request::post("/account")
                .header(header::COOKIE, format!("__Host-strata_session={session}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!(
                    "{form}&_csrf={}",
                    app.state.csrf.token("s", &session)
                )))
                .unwrap()
        };
        let (status, _, body) = app
            .send(change(
                "current=wrong+horse+battery&new=a+new+long+password&confirm=a+new+long+password",
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("current password is wrong"));
        let (status, headers, body) = app
            .send(change(
                "current=correct+horse+battery&new=a+new+long+password&confirm=a+new+long+password",
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("Password changed"));
        assert!(
            cookie_value(&headers, "__Host-strata_session").is_some(),
            "a fresh session for this browser"
        );
        let old = Request::get("/account")
            .header(
                header::COOKIE,
                format!("__Host-strata_session={other_session}"),
            )
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.send(old).await.0,
            StatusCode::SEE_OTHER,
            "other sessions ended"
        );
        let (_, hash) =
            strata_relay::store::accounts::user_by_email(&app.state.db, "new@example.com")
                .await
                .unwrap()
                .unwrap();
        assert!(strata_relay::auth::verify_password(
            "a new long password",
            &hash
        ));
    }
}

#[tokio::test]
async fn the_sender_page_says_why_a_modem_carries_no_data() {
    use strata_proto::message::{self as proto, ModemData, SimState};
    for db in test_databases().await {
        let app = TestApp::new(&db).await;
        let org = app.org("Acme").await;
        let viewer = app.member(&org, "v@example.com", Role::Viewer).await;
        let b = app.browser(&viewer).await;
        let modem = |id: &str, sim, data| proto::Modem {
            id: id.into(),
            manufacturer: "Quectel".into(),
            model: "EG25-G".into(),
            imei: "861536030196001".into(),
            operator: None,
            access_tech: "lte".into(),
            signal_percent: 0,
            rsrp_dbm: None,
            rsrq_db: None,
            sinr_db: None,
            sim,
            enabled: true,
            apn: None,
            interface: None,
            data,
        };
        let reported = proto::Inventory {
            modems: vec![
                modem("m1", SimState::Locked, ModemData::SimPinRequired),
                modem(
                    "m2",
                    SimState::Ready,
                    ModemData::BearerFailed { nm_reason: 29 },
                ),
            ],
            ..Default::default()
        };
        let sid = senders::create(&app.state.db, &org.id, "van-1", &Inventory::from(&reported))
            .await
            .unwrap();
        let (status, _, html) = app
            .send(b.get(&format!("/o/{}/senders/{sid}", org.id)))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("the SIM needs its PIN"), "{html}");
        assert!(
            html.contains("the data connection failed (NetworkManager reason 29); retrying"),
            "{html}"
        );
    }
}
