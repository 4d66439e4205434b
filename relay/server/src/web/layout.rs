//! What every dashboard page shows around its content: the organization
//! switcher, the navigation for the caller's role, the CSRF token for htmx.

use super::{AppError, AppState};
use crate::auth::Caller;
use crate::store::accounts::{Org, Role};

/// The page frame's data.
pub struct Nav {
    /// The user's email.
    pub email: String,
    /// The current organization.
    pub org: Org,
    /// Every organization the user belongs to.
    pub orgs: Vec<Org>,
    /// The user's role here.
    pub role: Role,
    /// CSRF token for forms and htmx requests.
    pub csrf: String,
    /// Which section is current.
    pub active: &'static str,
}

impl Nav {
    /// Whether the caller may change things (operator or owner).
    pub fn can_operate(&self) -> bool {
        self.role >= Role::Operator
    }

    /// Whether the caller manages members and tokens.
    pub fn is_owner(&self) -> bool {
        self.role == Role::Owner
    }
}

/// Builds the frame for a page caller.
pub fn nav(state: &AppState, caller: &Caller, active: &'static str) -> Result<Nav, AppError> {
    let orgs = caller.orgs.clone();
    let session = caller.session.as_deref().ok_or(AppError::LoginRequired)?;
    Ok(Nav {
        email: caller.user.email.clone(),
        org: caller.org.clone(),
        orgs,
        role: caller.role,
        csrf: state.csrf.token("s", session),
        active,
    })
}
