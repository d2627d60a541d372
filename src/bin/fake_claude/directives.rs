//! The square-bracket directives of a user message that script a turn's behaviour.

use std::str::FromStr;

pub(crate) const LOREM: &str = "lorem ipsum dolor sit amet ";

/// The behaviours scripted by `[word]` / `[word:N]` markers in a user message.
#[derive(Default)]
pub(crate) struct Directives {
    pub(crate) slow_ms: Option<u64>,
    pub(crate) crash: bool,
    pub(crate) hang: bool,
    pub(crate) garbage: bool,
    pub(crate) huge: Option<usize>,
    pub(crate) bigreply: Option<usize>,
    pub(crate) not_logged_in: bool,
    pub(crate) error: bool,
    pub(crate) tool: bool,
    pub(crate) unknown: bool,
    pub(crate) exit_after: bool,
    pub(crate) stderr: bool,
    pub(crate) early_exit: bool,
    pub(crate) spawn_tool: bool,
    pub(crate) bad_type: bool,
    pub(crate) api_retries: Option<u64>,
    pub(crate) alloc_mib: Option<usize>,
    /// `[stall-result]`: after the reply (stdout and transcript), block before the `result`.
    pub(crate) stall_result: bool,
    /// `[ask-write:FILE]` and `[ask-question]`, in the message's order.
    pub(crate) asks: Vec<Ask>,
}

/// A tool call that needs approval, scripted by a directive.
pub(crate) enum Ask {
    /// `[ask-write:FILE]`: Write `<cwd>/FILE`.
    Write(String),
    /// `[ask-question]`: AskUserQuestion.
    Question,
}

impl Directives {
    pub(crate) fn parse(text: &str) -> Self {
        let mut directives = Self::default();
        for chunk in text.split('[').skip(1) {
            let Some((body, _)) = chunk.split_once(']') else {
                continue;
            };
            let (name, arg) = match body.split_once(':') {
                Some((name, arg)) => (name, Some(arg.trim())),
                None => (body, None),
            };
            directives.apply(name.trim(), arg);
        }
        directives
    }

    pub(crate) fn apply(&mut self, name: &str, arg: Option<&str>) {
        match name {
            "slow" => self.slow_ms = number(arg),
            "crash" => self.crash = true,
            "hang" => self.hang = true,
            "api-retry" => self.api_retries = number(arg),
            "garbage" => self.garbage = true,
            "huge" => self.huge = number(arg),
            "bigreply" => self.bigreply = number(arg),
            "notloggedin" => self.not_logged_in = true,
            "error" => self.error = true,
            "tool" => self.tool = true,
            "unknown" => self.unknown = true,
            "exit-after" => self.exit_after = true,
            "stderr" => self.stderr = true,
            "early-exit" => self.early_exit = true,
            "spawn-tool" => self.spawn_tool = true,
            "badtype" => self.bad_type = true,
            "alloc" => self.alloc_mib = number(arg),
            "stall-result" => self.stall_result = true,
            "ask-write" => {
                if let Some(file) = arg.filter(|file| !file.is_empty()) {
                    self.asks.push(Ask::Write(file.to_owned()));
                }
            }
            "ask-question" => self.asks.push(Ask::Question),
            _ => {}
        }
    }
}

pub(crate) fn number<T: FromStr>(arg: Option<&str>) -> Option<T> {
    arg?.parse().ok()
}

/// `LOREM` repeated and cut to exactly `len` bytes.
pub(crate) fn lorem(len: usize) -> String {
    LOREM.chars().cycle().take(len).collect()
}
