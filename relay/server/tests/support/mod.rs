//! Test harness: the relay's router on a fresh SQLite file and, when
//! `STRATA_TEST_PG_URL` is set (scripts/test sets it), a fresh PostgreSQL
//! database; requests go straight into the router (no socket).

#![allow(dead_code)]

pub mod device;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use sqlx::Connection;
use strata_relay::config::Config;
use strata_relay::store::accounts::{self, Org, Role, User};
use strata_relay::store::{sessions, tokens};
use strata_relay::web::{self, AppState};
use tower::ServiceExt;

/// A database for one test.
pub struct TestDb {
    /// "sqlite" or "postgres".
    pub label: &'static str,
    /// Its URL.
    pub url: String,
    /// The data directory (and the SQLite file).
    pub dir: tempfile::TempDir,
}

/// The databases every storage-touching test runs against.
pub async fn test_databases() -> Vec<TestDb> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    out.push(TestDb {
        label: "sqlite",
        url: format!("sqlite://{}/strata.db", dir.path().display()),
        dir,
    });
    match std::env::var("STRATA_TEST_PG_URL") {
        Ok(admin) => {
            let name = format!("strata_t_{}", strata_relay::new_id());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to the test PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let url = match admin.rfind('/') {
                Some(i) => format!("{}/{name}", &admin[..i]),
                None => panic!("STRATA_TEST_PG_URL needs a database path"),
            };
            out.push(TestDb {
                label: "postgres",
                url,
                dir: tempfile::tempdir().unwrap(),
            });
        }
        Err(_) if std::env::var("STRATA_TEST_REQUIRE_PG").is_ok() => {
            panic!("STRATA_TEST_REQUIRE_PG is set but STRATA_TEST_PG_URL is not")
        }
        Err(_) => eprintln!("STRATA_TEST_PG_URL not set: PostgreSQL part skipped"),
    }
    out
}

/// The relay's state and router over one test database.
pub struct TestApp {
    /// Which database.
    pub label: &'static str,
    /// Shared state (database pool, keys).
    pub state: AppState,
    /// The router.
    pub router: Router,
}

impl TestApp {
    /// Builds the app on a database.
    pub async fn new(db: &TestDb) -> TestApp {
        Self::with(db, |_| {}).await
    }

    /// Builds the app with a config tweak.
    pub async fn with(db: &TestDb, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = Config {
            data_dir: db.dir.path().join("data"),
            database_url: db.url.clone(),
            ..Config::default()
        };
        tweak(&mut config);
        let (state, _) = web::state(config).await.expect("state");
        TestApp {
            label: db.label,
            router: web::router(state.clone()),
            state,
        }
    }

    /// Sends a request; returns status, headers and body (not for SSE).
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends a request and returns only its status (the body may be an endless stream).
    pub async fn status(&self, req: Request<Body>) -> StatusCode {
        self.router.clone().oneshot(req).await.unwrap().status()
    }

    /// Creates an organization.
    pub async fn org(&self, name: &str) -> Org {
        accounts::create_org(&self.state.db, name).await.unwrap()
    }

    /// Creates a user (password hash not usable for login) with a role in an organization.
    pub async fn member(&self, org: &Org, email: &str, role: Role) -> User {
        let user = accounts::create_user(&self.state.db, email, "!")
            .await
            .unwrap();
        accounts::add_member(&self.state.db, &org.id, &user.id, role)
            .await
            .unwrap();
        user
    }

    /// A logged-in browser for a user.
    pub async fn browser(&self, user: &User) -> Browser {
        let session = sessions::create(&self.state.db, &user.id, 1).await.unwrap();
        Browser {
            csrf: self.state.csrf.token("s", &session),
            session,
        }
    }

    /// An API token for a member.
    pub async fn token(&self, org: &Org, user: &User, role: Role) -> String {
        tokens::create(&self.state.db, &org.id, &user.id, "test", role)
            .await
            .unwrap()
            .1
    }
}

/// A session cookie and its CSRF token.
#[derive(Clone)]
pub struct Browser {
    /// Session cookie value.
    pub session: String,
    /// Matching CSRF token.
    pub csrf: String,
}

impl Browser {
    /// A GET with the session cookie.
    pub fn get(&self, path: &str) -> Request<Body> {
        Request::get(path)
            .header(
                header::COOKIE,
                format!("__Host-strata_session={}", self.session),
            )
            .body(Body::empty())
            .unwrap()
    }

    /// A form POST with the session cookie and the CSRF field.
    pub fn post(&self, path: &str, form: &str) -> Request<Body> {
        let body = if form.is_empty() {
            format!("_csrf={}", self.csrf)
        } else {
            format!("{form}&_csrf={}", self.csrf)
        };
        self.post_raw(path, body)
    }

    /// A form POST with exactly this body (no CSRF field added).
    pub fn post_raw(&self, path: &str, body: String) -> Request<Body> {
        Request::post(path)
            .header(
                header::COOKIE,
                format!("__Host-strata_session={}", self.session),
            )
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    }
}

/// An API request with a bearer token and an optional JSON body.
pub fn api(method: &str, path: &str, token: &str, json: Option<&str>) -> Request<Body> {
    let b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    match json {
        Some(j) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(j.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}
