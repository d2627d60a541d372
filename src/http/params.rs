//! The path parameters routes share, as the OpenAPI document describes them (the handlers
//! read them as strings with `ApiPath`).

use utoipa::IntoParams;

/// A session's id in a path.
#[derive(IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)] // read by the document only
pub(super) struct SessionId(
    /// The session's id (a UUID).
    #[param(example = "0b6c2a52-6f0e-4c7e-9d55-3f7f2f6f1c11")]
    String,
);

/// An approval's or a push's numeric id in a path.
#[derive(IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)] // read by the document only
pub(super) struct NumericId(#[param(example = 7)] i64);

/// A terminal's id in a path.
#[derive(IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
#[allow(dead_code)] // read by the document only
pub(super) struct TerminalId(String);
