//! The interactive CLI (no `-p`), as a terminal shows it.

use std::io::{self, BufRead, Write};

use serde_json::json;
use uuid::Uuid;

use crate::protocol::VERSION;
use crate::transcript::Session;

/// The interactive screen (no `-p`), as a person sees it in a terminal: a banner, a `❯ `
/// prompt, each line typed (the terminal echoes it) answered with `● ` and the same reply
/// the stream mode gives, both kept in the conversation's transcript, which a later
/// `--resume` (chat) continues. `/exit` or the end of input ends it with code 0; Ctrl-C
/// (SIGINT from the terminal) ends it as a signal does.
pub(crate) fn interactive(mut session: Session) -> i32 {
    let mut out = io::stdout();
    let _ = write!(
        out,
        "fake-claude {VERSION} (interactive)\n{}\n",
        session.cwd
    );
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let _ = write!(out, "\u{276f} ");
        let _ = out.flush();
        let Some(Ok(line)) = lines.next() else {
            return 0;
        };
        let text = line.trim().to_owned();
        if text.is_empty() {
            continue;
        }
        if text == "/exit" {
            let _ = writeln!(
                out,
                "Resume this session with:\nclaude --resume {}",
                session.id
            );
            return 0;
        }
        session.record_user(json!(text), Some("typed"));
        session.history.push(text.clone());
        let reply = format!("echo: {text} | history: {}", session.history.join(" / "));
        let block = json!({"type": "text", "text": reply});
        session.record_assistant(&format!("msg_typed_{}", Uuid::new_v4()), &block, "end_turn");
        let _ = writeln!(out, "\u{25cf} {reply}");
    }
}
