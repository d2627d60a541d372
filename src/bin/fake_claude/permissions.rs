//! Permission modes: which the CLI starts in, which a host may switch to, and the state a
//! process keeps of them.

use crate::args::Args;

/// What `--permission-mode` accepts: the real CLI's list, and `default`.
pub(crate) const START_MODES: &[&str] = &[
    "default",
    "acceptEdits",
    "auto",
    "bypassPermissions",
    "manual",
    "dontAsk",
    "plan",
];
/// What a host's `set_permission_mode` may choose (`bypassPermissions` only in a process
/// started in that mode, or with `--dangerously-skip-permissions` or
/// `--allow-dangerously-skip-permissions`; else the error `bypass_not_launched`).
pub(crate) const MODES: &[&str] = &[
    "acceptEdits",
    "auto",
    "bypassPermissions",
    "default",
    "dontAsk",
    "plan",
];
/// Modes in which a file edit runs without asking.
pub(crate) const EDITS_ALLOWED: &[&str] = &["acceptEdits", "bypassPermissions"];

/// How tools that need approval are handled, from the flags and later `set_permission_mode`.
pub(crate) struct Permissions {
    /// `--permission-prompt-tool stdio`: ask the host with `can_use_tool`.
    pub(crate) ask_host: bool,
    /// The current permission mode, shown in every `system/init`.
    pub(crate) mode: String,
    /// Whether a host may switch to `bypassPermissions`.
    pub(crate) can_bypass: bool,
}

impl Permissions {
    pub(crate) fn from_args(args: &Args) -> Self {
        Self {
            ask_host: args.permission_prompt_tool.as_deref() == Some("stdio"),
            mode: args.permission_mode.clone(),
            // As the real CLI: launched in the mode, or with either flag.
            can_bypass: args.skip_permissions
                || args.allow_skip_permissions
                || args.permission_mode == "bypassPermissions",
        }
    }
}
