//! Claude Code as a persistent process: `claude -p --input-format stream-json
//! --output-format stream-json --verbose`, one JSON object per line each way.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    Agent, Decision, Interactive, Launch, Parsed, PermissionRequest, Signal, TextDelta, TurnRecord,
    TurnResult,
};
use crate::config::AgentSettings;

/// tether's own settings come from variables with this prefix (matched in any case, as the
/// settings loader does); they include `auth.secret`, so no CLI process inherits them.
const SETTINGS_ENV_PREFIX: &str = "TETHER__";

/// The names in `vars` that are tether's settings variables.
fn settings_vars(vars: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    vars.filter(|name| is_settings_var(name)).collect()
}

/// Whether `name` is one of tether's settings variables, which no child may inherit.
pub fn is_settings_var(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes()
        .get(..SETTINGS_ENV_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SETTINGS_ENV_PREFIX.as_bytes()))
}

/// The flags that make Claude Code a long-lived, line-speaking process. With
/// `--include-partial-messages` it also prints the model's text as it streams in
/// (`stream_event` lines), which tether hands to live listeners without storing it.
pub const STREAM_ARGS: [&str; 7] = [
    "-p",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
];

/// The `type` of the lines that carry a message still being written.
const STREAM_EVENT: &str = "stream_event";

#[derive(Debug, Clone)]
pub struct Claude {
    program: PathBuf,
    extra_args: Vec<String>,
    env: BTreeMap<String, String>,
}

impl Claude {
    pub fn new(program: impl Into<PathBuf>, settings: &AgentSettings) -> Self {
        Self {
            program: program.into(),
            extra_args: settings.args.clone(),
            env: settings.env.clone(),
        }
    }

    /// The transcript of `launch`'s conversation, where the CLI keeps it: under
    /// `CLAUDE_CONFIG_DIR`, else `~/.claude`, as the CLI will see them (`agent.env` first,
    /// then tether's own environment). None without either.
    fn transcript(&self, launch: &Launch) -> Option<PathBuf> {
        let var = |name: &str| {
            self.env
                .get(name)
                .map(Into::into)
                .or_else(|| std::env::var_os(name))
        };
        let config = match var("CLAUDE_CONFIG_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(var("HOME")?).join(".claude"),
        };
        Some(super::transcript::path(
            &config,
            &launch.cwd,
            &launch.conversation_id,
        ))
    }
}

impl Agent for Claude {
    fn name(&self) -> &'static str {
        "claude"
    }

    fn command(&self, launch: &Launch) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(STREAM_ARGS)
            // --session-id on an existing transcript fails ("already in use"): the first start
            // of a conversation creates it, every later one resumes it.
            .arg(if launch.resume {
                "--resume"
            } else {
                "--session-id"
            })
            .arg(&launch.conversation_id)
            // Tools that need approval are asked about on stdout (`can_use_tool`) and wait.
            .args(["--permission-prompt-tool", "stdio", "--permission-mode"])
            .arg(&launch.permission_mode)
            .args(&self.extra_args)
            .envs(&self.env)
            .current_dir(&launch.cwd);
        // After `envs`: not even `agent.env` passes tether's settings on.
        let configured = self.env.keys().map(std::ffi::OsString::from);
        for name in settings_vars(std::env::vars_os().map(|(k, _)| k).chain(configured)) {
            cmd.env_remove(name);
        }
        cmd
    }

    fn interactive(&self, launch: Option<&Launch>) -> Interactive {
        let mut args = Vec::new();
        if let Some(launch) = launch {
            // The same conversation file the stream process writes: chat resumes it after.
            let start = if launch.resume {
                "--resume"
            } else {
                "--session-id"
            };
            args.extend([start.to_string(), launch.conversation_id.clone()]);
            args.extend([
                "--permission-mode".to_string(),
                launch.permission_mode.clone(),
            ]);
        }
        args.extend(self.extra_args.iter().cloned());
        Interactive {
            program: self.program.clone(),
            args,
            env: self.env.clone().into_iter().collect(),
        }
    }

    fn user_line(&self, text: &str) -> String {
        json!({
            "type": "user",
            "message": {"role": "user", "content": [{"type": "text", "text": text}]}
        })
        .to_string()
    }

    fn interrupt_line(&self, request_id: &str) -> Option<String> {
        Some(
            json!({
                "type": "control_request",
                "request_id": request_id,
                "request": {"subtype": "interrupt"}
            })
            .to_string(),
        )
    }

    fn permission_line(&self, request_id: &str, decision: &Decision) -> Option<String> {
        let response = match decision {
            Decision::Allow {
                updated_input,
                updated_permissions,
            } => {
                let mut r = json!({"behavior": "allow", "updatedInput": updated_input});
                if let Some(p) = updated_permissions {
                    r["updatedPermissions"] = p.clone();
                }
                r
            }
            Decision::Deny { message } => json!({"behavior": "deny", "message": message}),
        };
        Some(
            json!({
                "type": "control_response",
                "response": {"subtype": "success", "request_id": request_id, "response": response}
            })
            .to_string(),
        )
    }

    fn permission_mode_line(&self, request_id: &str, mode: &str) -> Option<String> {
        Some(
            json!({
                "type": "control_request",
                "request_id": request_id,
                "request": {"subtype": "set_permission_mode", "mode": mode}
            })
            .to_string(),
        )
    }

    fn parse_line(&self, line: &str) -> Parsed {
        // Only the fields tether acts on are read; the rest is checked to be JSON and
        // skipped (the line itself is what is stored and streamed).
        let Ok(head) = serde_json::from_str::<Head>(line) else {
            return Parsed::Invalid;
        };
        let kind = head.kind.unwrap_or_else(|| "unknown".into());
        if kind == STREAM_EVENT {
            return Parsed::Partial(text_delta(
                head.event,
                head.parent_tool_use_id,
                head.api_message_id,
            ));
        }
        let signal = match (kind.as_str(), head.request, head.request_id) {
            ("result", _, _) => Signal::TurnDone(Box::new(TurnResult {
                is_error: head.is_error.unwrap_or(false),
                subtype: head.subtype.unwrap_or_default(),
                text: head.result.unwrap_or_default(),
                conversation_id: head.session_id,
                cumulative_cost_usd: head.total_cost_usd,
                duration_ms: head.duration_ms,
                usage: head.usage,
            })),
            ("control_request", Some(r), Some(request_id)) if r.subtype == "can_use_tool" => {
                let tool_name = r.tool_name.unwrap_or_default();
                Signal::Permission(Box::new(PermissionRequest {
                    question: r.requires_user_interaction == Some(true)
                        || tool_name == ASK_USER_QUESTION,
                    request_id,
                    tool_name,
                    input: r.input.unwrap_or(Value::Null),
                    description: r.description,
                    suggestions: r.permission_suggestions,
                }))
            }
            ("control_response", _, _) => control_answer(head.response.as_ref()),
            _ => Signal::None,
        };
        Parsed::Event { kind, signal }
    }

    fn has_conversation(&self, launch: &Launch) -> Option<bool> {
        Some(self.transcript(launch)?.is_file())
    }

    fn read_turn(&self, launch: &Launch, text: &str, sent_at_ms: i64) -> Option<TurnRecord> {
        let transcript = self.transcript(launch)?;
        match super::transcript::find_turn(&transcript, text, sent_at_ms) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(error = %e, path = %transcript.display(), "could not read the CLI's transcript");
                None
            }
        }
    }

    fn wrong_start(&self, launch: &Launch, output: &str) -> bool {
        if launch.resume {
            output.contains("No conversation found with session ID")
        } else {
            output.contains("is already in use")
        }
    }
}

/// The fields of a stdout line that tether reads; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    subtype: Option<String>,
    is_error: Option<bool>,
    result: Option<String>,
    session_id: Option<String>,
    total_cost_usd: Option<f64>,
    duration_ms: Option<i64>,
    usage: Option<Value>,
    request_id: Option<String>,
    request: Option<ControlRequest>,
    /// A `control_response`'s answer, read loosely (see [`control_answer`]).
    response: Option<Value>,
    /// A `stream_event`'s event of the Messages API stream.
    event: Option<StreamEvent>,
    /// Set on the lines of a subagent (a Task tool); null for the conversation's own.
    parent_tool_use_id: Option<String>,
    api_message_id: Option<String>,
}

/// A `control_response` to one of tether's requests: `subtype` `success`, or `error` with
/// the CLI's `error` text. One without a `request_id` answers nothing tether can match.
fn control_answer(response: Option<&Value>) -> Signal {
    let Some(response) = response else {
        return Signal::None;
    };
    let Some(request_id) = response["request_id"].as_str() else {
        return Signal::None;
    };
    let error = (response["subtype"] != "success").then(|| {
        response["error"]
            .as_str()
            .filter(|e| !e.is_empty())
            .unwrap_or("the agent refused the request without saying why")
            .to_string()
    });
    Signal::ControlAnswer {
        request_id: request_id.to_string(),
        error,
    }
}

/// The Messages API event a `stream_event` line carries; only text deltas are read.
#[derive(Deserialize)]
struct StreamEvent {
    #[serde(rename = "type")]
    kind: String,
    index: Option<u64>,
    delta: Option<Delta>,
}

/// A delta: of a content block (with its `type`), or of the message (`message_delta`'s,
/// with `stop_reason` and no `type`).
#[derive(Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
}

/// The text a `stream_event` adds to the conversation's reply: a `text_delta` of its own
/// (not a subagent's), else nothing.
fn text_delta(
    event: Option<StreamEvent>,
    parent_tool_use_id: Option<String>,
    api_message_id: Option<String>,
) -> Option<TextDelta> {
    let event = event.filter(|e| e.kind == "content_block_delta")?;
    if parent_tool_use_id.is_some() {
        return None;
    }
    let delta = event
        .delta
        .filter(|d| d.kind.as_deref() == Some("text_delta"))?;
    Some(TextDelta {
        text: delta.text.filter(|t| !t.is_empty())?,
        api_message_id,
        index: event.index.unwrap_or(0),
    })
}

/// The `request` of a `control_request` the CLI sends (a permission prompt).
#[derive(Deserialize)]
struct ControlRequest {
    subtype: String,
    tool_name: Option<String>,
    input: Option<Value>,
    description: Option<String>,
    permission_suggestions: Option<Value>,
    requires_user_interaction: Option<bool>,
}

/// The tool through which Claude asks the user questions.
const ASK_USER_QUESTION: &str = "AskUserQuestion";

#[cfg(test)]
mod tests {
    use super::*;

    fn claude() -> Claude {
        Claude {
            program: "claude".into(),
            extra_args: vec!["--model".into(), "x".into()],
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn first_start_uses_session_id_and_later_ones_resume() {
        let mut launch = Launch {
            conversation_id: "abc".into(),
            cwd: "/tmp".into(),
            resume: false,
            permission_mode: "plan".into(),
        };
        let args = |l: &Launch| -> Vec<String> {
            claude()
                .command(l)
                .as_std()
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let first = args(&launch);
        let n = STREAM_ARGS.len();
        assert_eq!(&first[..n], &STREAM_ARGS);
        assert!(first.contains(&"--include-partial-messages".to_string()));
        assert_eq!(
            &first[n..],
            &[
                "--session-id",
                "abc",
                "--permission-prompt-tool",
                "stdio",
                "--permission-mode",
                "plan",
                "--model",
                "x"
            ]
        );
        launch.resume = true;
        assert_eq!(&args(&launch)[n..n + 2], &["--resume", "abc"]);
    }

    #[test]
    fn a_permission_request_and_its_answers_are_the_cli_lines() {
        let c = claude();
        let line = r#"{"type":"control_request","request_id":"r1","request":{"subtype":"can_use_tool","tool_name":"Write","display_name":"Write","input":{"file_path":"/p/hello.txt","content":"hi"},"description":"hello.txt","permission_suggestions":[{"type":"setMode","mode":"acceptEdits","destination":"session"}],"tool_use_id":"toolu_1"}}"#;
        let Parsed::Event {
            kind,
            signal: Signal::Permission(req),
        } = c.parse_line(line)
        else {
            panic!("a permission request")
        };
        assert_eq!(kind, "control_request");
        assert_eq!(
            (req.request_id.as_str(), req.tool_name.as_str()),
            ("r1", "Write")
        );
        assert_eq!(req.input["file_path"], "/p/hello.txt");
        assert_eq!(req.description.as_deref(), Some("hello.txt"));
        assert!(!req.question);
        let question = r#"{"type":"control_request","request_id":"r2","request":{"subtype":"can_use_tool","tool_name":"AskUserQuestion","input":{"questions":[]},"requires_user_interaction":true}}"#;
        assert!(
            matches!(c.parse_line(question), Parsed::Event { signal: Signal::Permission(r), .. } if r.question)
        );
        // The answer to our own interrupt is not a request.
        let ours =
            r#"{"type":"control_request","request_id":"r3","request":{"subtype":"interrupt"}}"#;
        assert!(matches!(
            c.parse_line(ours),
            Parsed::Event {
                signal: Signal::None,
                ..
            }
        ));

        let allow = Decision::Allow {
            updated_input: serde_json::json!({"a": 1}),
            updated_permissions: None,
        };
        let v: Value = serde_json::from_str(&c.permission_line("r1", &allow).unwrap()).unwrap();
        assert_eq!(v["type"], "control_response");
        assert_eq!(v["response"]["request_id"], "r1");
        assert_eq!(
            v["response"]["response"],
            serde_json::json!({"behavior": "allow", "updatedInput": {"a": 1}})
        );
        let deny = Decision::Deny {
            message: "no".into(),
        };
        let v: Value = serde_json::from_str(&c.permission_line("r1", &deny).unwrap()).unwrap();
        assert_eq!(
            v["response"]["response"],
            serde_json::json!({"behavior": "deny", "message": "no"})
        );
    }

    #[test]
    fn a_control_response_is_an_answer_its_error_a_refusal() {
        let c = claude();
        let answer = |line: &str| match c.parse_line(line) {
            Parsed::Event {
                signal: Signal::ControlAnswer { request_id, error },
                ..
            } => Some((request_id, error)),
            _ => None,
        };
        let ok = r#"{"type":"control_response","response":{"subtype":"success","request_id":"m1","response":{"mode":"plan"}}}"#;
        assert_eq!(answer(ok), Some(("m1".into(), None)));
        let refused = r#"{"type":"control_response","response":{"subtype":"error","request_id":"m2","error":"Cannot set permission mode to bypassPermissions because the session was not launched with --dangerously-skip-permissions","error_code":"bypass_not_launched"}}"#;
        let (id, error) = answer(refused).unwrap();
        assert_eq!(id, "m2");
        assert!(error.unwrap().starts_with("Cannot set permission mode"));
        let silent =
            r#"{"type":"control_response","response":{"subtype":"error","request_id":"m3"}}"#;
        assert!(answer(silent).unwrap().1.is_some());
        // No id to match, or a `response` of another shape: read as nothing, not as invalid.
        for odd in [
            r#"{"type":"control_response","response":{"subtype":"success"}}"#,
            r#"{"type":"control_response","response":"odd"}"#,
        ] {
            assert!(
                matches!(
                    c.parse_line(odd),
                    Parsed::Event {
                        signal: Signal::None,
                        ..
                    }
                ),
                "{odd}"
            );
        }
    }

    #[test]
    fn settings_variables_are_recognised_in_any_case() {
        let names = [
            "TETHER__AUTH__SECRET",
            "tether__x",
            "TETHER_",
            "PATH",
            "MY_TETHER__X",
            "T",
        ];
        let found = settings_vars(names.iter().map(std::ffi::OsString::from));
        assert_eq!(found, ["TETHER__AUTH__SECRET", "tether__x"]);
    }

    #[test]
    fn the_cli_gets_none_of_tethers_settings_variables() {
        #[allow(clippy::result_large_err)] // figment's Jail closure returns its own error type
        figment::Jail::expect_with(|jail| {
            jail.set_env("TETHER__AUTH__SECRET", "inherited-secret");
            let mut c = claude();
            c.env
                .insert("TETHER__PUSH__APNS__KEY_PATH".into(), "/k.p8".into());
            c.env.insert("CLAUDE_CONFIG_DIR".into(), "/c".into());
            let launch = Launch {
                conversation_id: "abc".into(),
                cwd: "/tmp".into(),
                resume: false,
                permission_mode: "default".into(),
            };
            let cmd = c.command(&launch);
            let envs: BTreeMap<String, Option<String>> = cmd
                .as_std()
                .get_envs()
                .map(|(k, v)| {
                    let v = v.map(|v| v.to_string_lossy().into_owned());
                    (k.to_string_lossy().into_owned(), v)
                })
                .collect();
            assert_eq!(envs["TETHER__AUTH__SECRET"], None, "removed");
            assert_eq!(envs["TETHER__PUSH__APNS__KEY_PATH"], None, "removed");
            assert_eq!(envs["CLAUDE_CONFIG_DIR"].as_deref(), Some("/c"));
            Ok(())
        });
    }

    #[test]
    fn user_line_is_one_json_line() {
        let line = claude().user_line("two\nlines \"quoted\"");
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["message"]["content"][0]["text"], "two\nlines \"quoted\"");
    }

    #[test]
    fn result_line_ends_the_turn() {
        let line = r#"{"type":"result","subtype":"success","is_error":false,"result":"hi","session_id":"s1","total_cost_usd":0.002,"duration_ms":12,"usage":{"input_tokens":1},"extra":{"kept":true}}"#;
        let Parsed::Event { kind, signal } = claude().parse_line(line) else {
            panic!("not parsed")
        };
        assert_eq!(kind, "result");
        let Signal::TurnDone(r) = signal else {
            panic!("no turn end")
        };
        assert!(!r.is_error);
        assert_eq!(r.text, "hi");
        assert_eq!(r.conversation_id.as_deref(), Some("s1"));
        assert_eq!(r.cumulative_cost_usd, Some(0.002));
    }

    #[test]
    fn text_deltas_are_read_and_other_stream_events_are_partial_with_no_text() {
        // Lines as Claude Code 2.1.329 prints them with --include-partial-messages.
        let delta = r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hel"}},"session_id":"s","parent_tool_use_id":null,"uuid":"u","api_message_id":"msg_1"}"#;
        let Parsed::Partial(Some(d)) = claude().parse_line(delta) else {
            panic!("a text delta")
        };
        assert_eq!(
            d,
            TextDelta {
                text: "Hel".into(),
                api_message_id: Some("msg_1".into()),
                index: 1
            }
        );
        for other in [
            r#"{"type":"stream_event","event":{"type":"message_start","message":{"id":"msg_1","content":[]}},"parent_tool_use_id":null}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a"}}}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_stop","index":0}}"#,
            r#"{"type":"stream_event","event":{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":5}},"session_id":"s","parent_tool_use_id":null}"#,
            r#"{"type":"stream_event","event":{"type":"message_stop"}}"#,
            // A subagent's text is not the conversation's reply.
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}},"parent_tool_use_id":"toolu_1"}"#,
        ] {
            assert!(
                matches!(claude().parse_line(other), Parsed::Partial(None)),
                "{other}"
            );
        }
    }

    #[test]
    fn unknown_types_are_kept_and_garbage_is_invalid() {
        let Parsed::Event { kind, signal, .. } = claude().parse_line(r#"{"type":"mystery","x":1}"#)
        else {
            panic!()
        };
        assert_eq!((kind.as_str(), signal), ("mystery", Signal::None));
        assert!(matches!(claude().parse_line("not json {"), Parsed::Invalid));
        assert!(matches!(claude().parse_line("[1,2]"), Parsed::Invalid));
    }
}
