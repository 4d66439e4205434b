//! The authorization matrix: every route x every role x own / other
//! organization (and own organization with another organization's object
//! id). No cross-tenant read or write may pass, a role too low gets 403, and
//! a refused request changes nothing in the database.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use strata_relay::store::accounts::{Org, Role, User};
use strata_relay::store::destinations::{self, DestinationInput};
use strata_relay::store::senders::{self, Inventory};
use strata_relay::store::tokens;
use support::{Browser, TestApp, api, test_databases};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Page,
    Api,
}

struct Route {
    kind: Kind,
    method: &'static str,
    path: &'static str,
    min: Role,
    body: &'static str,
    /// Endless server-sent events: only the status is read.
    sse: bool,
    /// What an allowed caller gets when it is not a success (the matrix's
    /// senders are offline, so a start is a 409; a stop of no stream a 404).
    allowed: Option<u16>,
}

const fn page(method: &'static str, path: &'static str, min: Role, body: &'static str) -> Route {
    Route {
        kind: Kind::Page,
        method,
        path,
        min,
        body,
        sse: false,
        allowed: None,
    }
}

const fn api_route(
    method: &'static str,
    path: &'static str,
    min: Role,
    body: &'static str,
) -> Route {
    Route {
        kind: Kind::Api,
        method,
        path,
        min,
        body,
        sse: false,
        allowed: None,
    }
}

const SETTINGS_JSON: &str = r#"{"input":"test","codec":"h264","height":1080,"fps":30,"min_kbps":800,"max_kbps":5000,"audio":false}"#;
const DEST_JSON: &str = r#"{"name":"Twitch","kind":"rtmp","target":"rtmp://live.example.net/app","secret":"live_0123456789"}"#;

fn routes() -> Vec<Route> {
    use Role::*;
    vec![
        page("GET", "/o/{org}/senders", Viewer, ""),
        Route {
            sse: true,
            ..page("GET", "/o/{org}/senders/live", Viewer, "")
        },
        page("GET", "/o/{org}/senders/{sender}", Viewer, ""),
        page(
            "POST",
            "/o/{org}/senders/{sender}/settings",
            Operator,
            "input=test&codec=h265&height=1080&fps=25&min_kbps=600&max_kbps=3000",
        ),
        Route {
            sse: true,
            ..page("GET", "/o/{org}/senders/{sender}/live", Viewer, "")
        },
        page("GET", "/o/{org}/destinations", Viewer, ""),
        page(
            "POST",
            "/o/{org}/destinations",
            Operator,
            "name=New&kind=srt&target=srt%3A%2F%2F127.0.0.1%3A9000&secret=",
        ),
        page(
            "POST",
            "/o/{org}/destinations/{dest}",
            Operator,
            "name=Renamed&kind=rtmp&target=rtmp%3A%2F%2Fh%2Fapp2&secret=",
        ),
        page("POST", "/o/{org}/destinations/{dest}/delete", Operator, ""),
        page("GET", "/o/{org}/streams", Viewer, ""),
        page("GET", "/o/{org}/members", Viewer, ""),
        page(
            "POST",
            "/o/{org}/members",
            Owner,
            "email={loner}&role=viewer",
        ),
        page("POST", "/o/{org}/members/{user}", Owner, "role=operator"),
        page("POST", "/o/{org}/members/{user}", Owner, "role=remove"),
        page("GET", "/o/{org}/tokens", Owner, ""),
        page("POST", "/o/{org}/tokens", Owner, "name=ci&role=viewer"),
        page("POST", "/o/{org}/tokens/{token}/revoke", Owner, ""),
        page(
            "POST",
            "/o/{org}/senders/{sender}/revoke",
            Owner,
            "confirm=yes",
        ),
        // The matrix's senders report no modem: an allowed caller gets 404.
        Route {
            allowed: Some(404),
            ..page(
                "POST",
                "/o/{org}/senders/{sender}/modems/m0",
                Operator,
                "action=enable",
            )
        },
        // No release is stored in the matrix's relay: an allowed caller gets 404.
        Route {
            allowed: Some(404),
            ..page(
                "POST",
                "/o/{org}/senders/{sender}/update",
                Operator,
                "release=x86_64-unknown-linux-gnu%2F9.9.9",
            )
        },
        api_route("GET", "/api/v1/o/{org}/senders", Viewer, ""),
        api_route("GET", "/api/v1/o/{org}/senders/{sender}", Viewer, ""),
        api_route(
            "PUT",
            "/api/v1/o/{org}/senders/{sender}/settings",
            Operator,
            SETTINGS_JSON,
        ),
        api_route(
            "GET",
            "/api/v1/o/{org}/senders/{sender}/telemetry",
            Viewer,
            "",
        ),
        api_route("POST", "/api/v1/o/{org}/senders/{sender}/revoke", Owner, ""),
        Route {
            allowed: Some(404),
            ..api_route(
                "POST",
                "/api/v1/o/{org}/senders/{sender}/modems/m0",
                Operator,
                r#"{"action":"enable"}"#,
            )
        },
        Route {
            allowed: Some(404),
            ..api_route(
                "POST",
                "/api/v1/o/{org}/senders/{sender}/update",
                Operator,
                r#"{"version":"9.9.9","target":"x86_64-unknown-linux-gnu"}"#,
            )
        },
        api_route("GET", "/api/v1/o/{org}/destinations", Viewer, ""),
        api_route("POST", "/api/v1/o/{org}/destinations", Operator, DEST_JSON),
        api_route(
            "PUT",
            "/api/v1/o/{org}/destinations/{dest}",
            Operator,
            DEST_JSON,
        ),
        api_route(
            "DELETE",
            "/api/v1/o/{org}/destinations/{dest}",
            Operator,
            "",
        ),
        api_route("GET", "/api/v1/o/{org}/streams", Viewer, ""),
        api_route("GET", "/api/v1/o/{org}/members", Viewer, ""),
        api_route(
            "POST",
            "/api/v1/o/{org}/members",
            Owner,
            r#"{"email":"{loner}","role":"viewer"}"#,
        ),
        api_route(
            "PUT",
            "/api/v1/o/{org}/members/{user}",
            Owner,
            r#"{"role":"operator"}"#,
        ),
        api_route("DELETE", "/api/v1/o/{org}/members/{user}", Owner, ""),
        api_route("GET", "/api/v1/o/{org}/tokens", Owner, ""),
        api_route(
            "POST",
            "/api/v1/o/{org}/tokens",
            Owner,
            r#"{"name":"ci","role":"viewer"}"#,
        ),
        api_route("DELETE", "/api/v1/o/{org}/tokens/{token}", Owner, ""),
    ]
}

/// Objects a request may name; fresh for every request so earlier ones cannot interfere.
struct Objects {
    sender: String,
    dest: String,
    user: String,
    token: String,
}

async fn objects(app: &TestApp, org: &Org, owner: &User, n: usize) -> Objects {
    let db = &app.state.db;
    let sender = senders::create(db, &org.id, &format!("sender {n}"), &Inventory::default())
        .await
        .unwrap();
    let input = DestinationInput {
        name: format!("dest {n}"),
        kind: "rtmp".into(),
        target: "rtmp://h/app".into(),
        secret: Some("key_0123456789".into()),
    };
    let dest = destinations::create(db, &app.state.sbox, &org.id, &input)
        .await
        .unwrap()
        .id;
    let user = app
        .member(
            org,
            &format!("extra-{n}-{}@example.org", org.id),
            Role::Viewer,
        )
        .await
        .id;
    let token = tokens::create(db, &org.id, &owner.id, "target", Role::Viewer)
        .await
        .unwrap()
        .0;
    Objects {
        sender,
        dest,
        user,
        token,
    }
}

fn fill(template: &str, org: &Org, o: &Objects, loner: &str) -> String {
    template
        .replace("{org}", &org.id)
        .replace("{sender}", &o.sender)
        .replace("{dest}", &o.dest)
        .replace("{user}", &o.user)
        .replace("{token}", &o.token)
        .replace("{loner}", loner)
}

/// Everything a refused request must leave as it was.
async fn fingerprint(app: &TestApp) -> String {
    let db = &app.state.db;
    let mut out = String::new();
    for q in [
        "SELECT id || ':' || name || ':' || settings FROM senders ORDER BY id",
        "SELECT id || ':' || name || ':' || kind || ':' || target || ':' || COALESCE(secret_hint, '') FROM destinations ORDER BY id",
        "SELECT org_id || ':' || user_id || ':' || role FROM memberships ORDER BY org_id, user_id",
        "SELECT id || ':' || role FROM api_tokens ORDER BY id",
        "SELECT id FROM users ORDER BY id",
    ] {
        let rows: Vec<(String,)> = sqlx::query_as(q).fetch_all(db).await.unwrap();
        for (r,) in rows {
            out.push_str(&r);
            out.push('\n');
        }
    }
    out
}

enum Who<'a> {
    Nobody,
    Page(&'a Browser),
    Api(&'a str),
}

fn request(route: &Route, who: &Who, path: &str, body: &str) -> Request<Body> {
    match who {
        Who::Nobody => {
            let b = Request::builder().method(route.method).uri(path);
            if route.kind == Kind::Api {
                b.header("content-type", "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap()
            } else {
                b.header("content-type", "application/x-www-form-urlencoded")
                    .body(Body::from(body.to_string()))
                    .unwrap()
            }
        }
        Who::Page(b) if route.method == "GET" => b.get(path),
        Who::Page(b) => b.post(path, body),
        Who::Api(t) => api(route.method, path, t, (!body.is_empty()).then_some(body)),
    }
}

#[tokio::test]
async fn every_route_every_role_every_tenant() {
    for db in test_databases().await {
        let app = TestApp::new(&db).await;
        let a = app.org("Alpha").await;
        let b = app.org("Bravo").await;
        let owner_b = app.member(&b, "owner@bravo.example", Role::Owner).await;
        let owner_a = app.member(&a, "owner@alpha.example", Role::Owner).await;
        let mut callers = Vec::new();
        for role in Role::ALL {
            let user = app
                .member(&a, &format!("{role}-caller@alpha.example"), role)
                .await;
            let browser = app.browser(&user).await;
            let token = app.token(&a, &user, role).await;
            callers.push((role, browser, token));
        }
        let mut n = 0;
        let mut checked = 0;
        for route in routes() {
            for (role, browser, token) in &callers {
                let who = if route.kind == Kind::Page {
                    Who::Page(browser)
                } else {
                    Who::Api(token)
                };
                // (organization in the path, organization whose objects are named, expected)
                for case in ["own", "other", "cross"] {
                    if case == "cross"
                        && !route.path.contains("/{sender}")
                        && !route.path.contains("{dest}")
                        && !route.path.contains("{user}")
                        && !route.path.contains("{token}")
                    {
                        continue;
                    }
                    n += 1;
                    let oa = objects(&app, &a, &owner_a, n).await;
                    let ob = objects(&app, &b, &owner_b, n).await;
                    let loner = app.state.db.clone();
                    let loner_email = format!("loner-{n}@example.org");
                    strata_relay::store::accounts::create_user(&loner, &loner_email, "!")
                        .await
                        .unwrap();
                    let (org, objs) = match case {
                        "own" => (&a, &oa),
                        "other" => (&b, &ob),
                        _ => (&a, &ob),
                    };
                    let path = fill(route.path, org, objs, &loner_email);
                    let body = fill(route.body, org, objs, &loner_email);
                    let before = fingerprint(&app).await;
                    let req = request(&route, &who, &path, &body);
                    let status = if route.sse {
                        app.status(req).await
                    } else {
                        app.send(req).await.0
                    };
                    let what = format!(
                        "[{}] {} {} as {role} ({case})",
                        app.label, route.method, route.path
                    );
                    match case {
                        "own" if *role >= route.min && route.allowed.is_some() => {
                            assert_eq!(Some(status.as_u16()), route.allowed, "{what}");
                        }
                        "own" if *role >= route.min => {
                            assert!(
                                status.is_success() || status.is_redirection(),
                                "{what}: expected success, got {status}"
                            );
                        }
                        "own" => {
                            assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                            assert_eq!(
                                before,
                                fingerprint(&app).await,
                                "{what}: a refused request wrote"
                            );
                        }
                        // Another organization's object under one's own: the role
                        // check may come first (403), else it is not found (404).
                        "cross" if *role < route.min => {
                            assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                            assert_eq!(
                                before,
                                fingerprint(&app).await,
                                "{what}: a refused request wrote"
                            );
                        }
                        _ => {
                            assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
                            assert_eq!(
                                before,
                                fingerprint(&app).await,
                                "{what}: a cross-tenant request wrote"
                            );
                        }
                    }
                    checked += 1;
                }
            }
            // And nobody at all.
            n += 1;
            let oa = objects(&app, &a, &owner_a, n).await;
            let path = fill(route.path, &a, &oa, "nobody@example.org");
            let before = fingerprint(&app).await;
            let req = request(
                &route,
                &Who::Nobody,
                &path,
                &fill(route.body, &a, &oa, "nobody@example.org"),
            );
            let status = app.status(req).await;
            let what = format!(
                "[{}] {} {} unauthenticated",
                app.label, route.method, route.path
            );
            match (route.kind, route.method) {
                (Kind::Api, _) => assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}"),
                // A state-changing page request without a session fails the CSRF check first.
                (Kind::Page, "POST") => assert_eq!(status, StatusCode::FORBIDDEN, "{what}"),
                (Kind::Page, _) => assert_eq!(status, StatusCode::SEE_OTHER, "{what}"),
            }
            assert_eq!(before, fingerprint(&app).await, "{what}: wrote");
        }
        assert!(checked > 200, "only {checked} cases ran");
        eprintln!("[{}] {checked} authorization cases passed", app.label);
    }
}
