//! The route table: each area adds its routes with who may call them, and the router is
//! built from the same table, so the list of routes (for tests, for docs) is the server's
//! own and cannot miss one.

use axum::{http::Method, routing::MethodRouter, Router};

use super::codes::ErrorCode;
use super::state::AppState;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (`/health`, pairing).
    Public,
    /// Any valid token; a user sees only what it owns.
    User,
    /// An admin token only (403 for users).
    Admin,
}

/// One route of the server.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    /// The codes its handler may answer besides the edge's (which the OpenAPI document
    /// adds by what the route is); its documented errors are these.
    pub errors: &'static [ErrorCode],
}

/// A router and the list of what it routes.
pub struct Routes {
    router: Router<AppState>,
    table: Vec<RouteInfo>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            router: Router::new(),
            table: Vec::new(),
        }
    }
}

impl Routes {
    /// Adds `handler` for `method` on `path` (several methods of one path merge), which
    /// may answer `errors`.
    pub fn add(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        handler: MethodRouter<AppState>,
        errors: &'static [ErrorCode],
    ) -> Self {
        self.router = self.router.route(path, handler);
        self.table.push(RouteInfo {
            method,
            path,
            access,
            errors,
        });
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    pub fn into_parts(self) -> (Router<AppState>, Vec<RouteInfo>) {
        (self.router, self.table)
    }
}
