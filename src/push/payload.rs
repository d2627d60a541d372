//! What a push looks like on the phone: a plain-text preview of a reply (markdown stripped,
//! cut at a word), and the APNs payload built with a2's builder, with `aps.thread-id` (which
//! a2 0.10 cannot set) added by a small wrapper, kept within Apple's 4096 bytes.

use std::collections::BTreeMap;

use a2::{
    request::payload::{PayloadLike, APS},
    CollapseId, DefaultNotificationBuilder, NotificationBuilder, NotificationOptions, Priority,
    PushType,
};
use serde::Serialize;

/// Apple's limit on the JSON of a notification; APNs answers 413 above it.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Longest plain text kept in an outbox row: no payload can show more than this.
pub const MAX_STORED_CHARS: usize = 4096;
/// Longest title or subtitle shown; a longer one is cut at a word.
pub const MAX_TITLE_CHARS: usize = 100;
/// Bytes of a reply looked at to make its preview (an agent's reply can be megabytes).
const MAX_SOURCE_BYTES: usize = 64 * 1024;
/// A cut keeps at least this share of the allowed characters; a longer last word is cut.
const MIN_CUT_SHARE: f32 = 0.6;

/// A notification as a2 sends it: a2's payload with `aps.thread-id` beside the fields a2
/// knows. [`PayloadLike::to_json_string`] is the exact body `a2::Client::send` posts.
#[derive(Debug, Clone, Serialize)]
pub struct Notification<'a> {
    #[serde(skip)]
    options: NotificationOptions<'a>,
    #[serde(skip)]
    device_token: &'a str,
    aps: Aps<'a>,
    #[serde(flatten)]
    data: BTreeMap<&'a str, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
struct Aps<'a> {
    #[serde(flatten)]
    base: APS<'a>,
    /// Groups a conversation's pushes on the phone: the session id.
    #[serde(rename = "thread-id")]
    thread_id: &'a str,
    /// `time-sensitive` when a person is waiting on the answer (a2 0.10 cannot set it).
    #[serde(rename = "interruption-level", skip_serializing_if = "Option::is_none")]
    interruption_level: Option<&'a str>,
}

impl PayloadLike for Notification<'_> {
    fn get_device_token(&self) -> &str {
        self.device_token
    }

    fn get_options(&self) -> &NotificationOptions<'_> {
        &self.options
    }
}

impl Notification<'_> {
    pub fn device_token(&self) -> &str {
        self.device_token
    }

    pub fn options(&self) -> &NotificationOptions<'_> {
        &self.options
    }
}

/// The visible text and the ids of a push, as the worker hands them to [`notification`].
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    /// [`PushKind::as_str`](super::kind::PushKind::as_str) (the `kind` custom key).
    pub kind: &'a str,
    pub title: &'a str,
    pub subtitle: Option<&'a str>,
    pub body: &'a str,
    /// The session it is about (the `sessionId` custom key); None for a terminal's push.
    pub session_id: Option<&'a str>,
    /// The terminal it is about (the `terminalId` custom key).
    pub terminal_id: Option<&'a str>,
    pub message_id: Option<i64>,
    /// `aps.category`: the actions the app offers on the notification.
    pub category: Option<&'a str>,
    /// `aps.interruption-level`.
    pub interruption_level: Option<&'a str>,
    /// The approval it asks for (the `approvalId` custom key).
    pub approval_id: Option<i64>,
}

/// The APNs headers of one notification besides push type and priority.
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    pub topic: Option<&'a str>,
    /// A later notification with the same id replaces the earlier one on the phone.
    pub collapse_id: Option<&'a str>,
    /// Seconds since the epoch after which APNs stops trying to deliver it.
    pub expiration: Option<u64>,
}

/// Builds the notification for one device. Custom keys beside `aps`: `sessionId` (or
/// `terminalId`),
/// `messageId` (when there is one; the app fetches the full text by it), `approvalId`
/// (when it asks for one) and `kind`.
pub fn notification<'a>(
    content: &Content<'a>,
    device_token: &'a str,
    headers: Headers<'a>,
) -> Result<Notification<'a>, a2::Error> {
    let mut builder = DefaultNotificationBuilder::new()
        .set_title(content.title)
        .set_body(content.body)
        .set_sound("default");
    if let Some(subtitle) = content.subtitle {
        builder = builder.set_subtitle(subtitle);
    }
    if let Some(category) = content.category {
        builder = builder.set_category(category);
    }
    let options = NotificationOptions {
        apns_topic: headers.topic,
        apns_push_type: Some(PushType::Alert),
        apns_priority: Some(Priority::High),
        apns_collapse_id: headers.collapse_id.map(CollapseId::new).transpose()?,
        apns_expiration: headers.expiration,
        ..Default::default()
    };
    let mut payload = builder.build(device_token, options);
    if let Some(id) = content.session_id {
        payload.add_custom_data("sessionId", &id)?;
    }
    if let Some(id) = content.terminal_id {
        payload.add_custom_data("terminalId", &id)?;
    }
    if let Some(id) = content.message_id {
        payload.add_custom_data("messageId", &id)?;
    }
    payload.add_custom_data("kind", &content.kind)?;
    if let Some(id) = content.approval_id {
        payload.add_custom_data("approvalId", &id)?;
    }
    let a2::request::payload::Payload {
        options,
        device_token,
        aps,
        data,
    } = payload;
    Ok(Notification {
        options,
        device_token,
        aps: Aps {
            base: aps,
            thread_id: content
                .session_id
                .or(content.terminal_id)
                .unwrap_or_default(),
            interruption_level: content.interruption_level,
        },
        data,
    })
}

/// Title, subtitle and body cut so that the payload fits in [`MAX_PAYLOAD_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    pub title: String,
    pub subtitle: Option<String>,
    pub body: String,
    /// The payload's JSON (the device token and topic are headers, not part of it).
    pub json: String,
}

/// Cuts the body (`whole.body`, the stored text) to `preview_chars` at a word, then shrinks it (and, if need be, the title)
/// until the exact JSON a2 will send is at most [`MAX_PAYLOAD_BYTES`]. JSON escaping and
/// multi-byte characters are counted as sent.
pub fn fit(whole: &Content<'_>, preview_chars: usize) -> Result<Fitted, a2::Error> {
    let text = whole.body;
    let mut title = cut_at_word(whole.title, MAX_TITLE_CHARS);
    let subtitle = whole.subtitle.map(|s| cut_at_word(s, MAX_TITLE_CHARS));
    let mut body = cut_at_word(text, preview_chars.max(1));
    loop {
        let content = Content {
            title: &title,
            subtitle: subtitle.as_deref(),
            body: &body,
            ..*whole
        };
        let json = notification(&content, "", Headers::default())?.to_json_string()?;
        if json.len() <= MAX_PAYLOAD_BYTES {
            return Ok(Fitted {
                title,
                subtitle,
                body,
                json,
            });
        }
        let body_chars = body.chars().count();
        if body_chars > 1 {
            body = cut_at_word(text, body_chars * 3 / 4);
        } else if !title.is_empty() {
            body.clear();
            title = cut_at_word(&title, title.chars().count() / 2);
        } else {
            return Err(a2::Error::InvalidOptions(format!(
                "the payload is {} bytes without any text",
                json.len()
            )));
        }
    }
}

/// Markdown turned into one line of plain text (CommonMark, by pulldown-cmark): the words
/// of headings, emphasis, code and links kept, their marks dropped, images replaced by
/// their alt text, list items marked "•", HTML dropped, whitespace collapsed. Only the
/// first [`MAX_SOURCE_BYTES`] are read.
pub fn plain_text(markdown: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    let source = prefix_bytes(markdown, MAX_SOURCE_BYTES);
    let mut out = String::with_capacity(source.len().min(MAX_STORED_CHARS * 2));
    for event in Parser::new_ext(source, Options::ENABLE_STRIKETHROUGH) {
        match event {
            Event::Text(text) | Event::Code(text) => out.push_str(&text),
            Event::Start(Tag::Item) => out.push_str(" • "),
            // The end of an inline mark joins what is around it; a block's end separates.
            Event::End(
                TagEnd::Emphasis
                | TagEnd::Strong
                | TagEnd::Strikethrough
                | TagEnd::Link
                | TagEnd::Image,
            ) => {}
            Event::SoftBreak | Event::HardBreak | Event::Rule | Event::End(_) => out.push(' '),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text cut to at most `max_chars` characters (with the "…" it ends with when cut), at
/// the last word boundary unless that would drop too much of it.
pub fn cut_at_word(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    if max_chars == 0 {
        return String::new();
    }
    let budget = max_chars - 1; // room for the ellipsis
    let end = text
        .char_indices()
        .nth(budget)
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    let head = &text[..end];
    let next_is_space = text[end..].starts_with(char::is_whitespace);
    let cut = if next_is_space {
        head
    } else {
        match head.rfind(char::is_whitespace) {
            Some(i) if head[..i].chars().count() as f32 >= budget as f32 * MIN_CUT_SHARE => {
                &head[..i]
            }
            _ => head,
        }
    };
    let cut = cut.trim_end_matches(|c: char| c.is_whitespace() || ",;:-–—".contains(c));
    format!("{cut}…")
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::kind::PushKind;
    use serde_json::{json, Value};

    const SESSION: &str = "3f2a9c1e-0d7b-4c55-9a34-6b1f0e2d8c47";
    const TOKEN: &str = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";

    fn json_of(n: &Notification<'_>) -> Value {
        serde_json::from_str(&n.to_json_string().unwrap()).unwrap()
    }

    #[test]
    fn strips_markdown_to_one_plain_line() {
        let md = "# Done\n\nI changed **three** files in `src/`:\n\n- `app.rs`\n- *main.rs*\n\n\
                  ```rust\nfn main() {}\n```\n\n> see [the docs](https://example.com/a_(b)) and \
                  ![a chart](c.png)\n\n---\n\nsnake_case_name stays, 2 * 3 = 6, ~~old~~ new\\*";
        assert_eq!(
            plain_text(md),
            "Done I changed three files in src/: • app.rs • main.rs fn main() {} see the docs \
             and a chart snake_case_name stays, 2 * 3 = 6, old new*"
        );
    }

    #[test]
    fn keeps_unbalanced_and_plain_brackets() {
        assert_eq!(plain_text("[x] done, see [1]"), "[x] done, see [1]");
        assert_eq!(
            plain_text("#hashtag and ## Heading ##"),
            "#hashtag and ## Heading ##"
        );
        assert_eq!(plain_text("## Heading ##"), "Heading");
        // CommonMark: an unclosed backtick is a literal backtick.
        assert_eq!(plain_text("unclosed `code"), "unclosed `code");
    }

    #[test]
    fn cuts_at_a_word_near_the_limit() {
        let text = "The quick brown fox jumps over the lazy dog again and again";
        let cut = cut_at_word(text, 20);
        assert_eq!(cut, "The quick brown fox…");
        assert!(cut.chars().count() <= 20);
        assert_eq!(cut_at_word("short", 20), "short");
        // One long word is cut inside it rather than dropped.
        let cut = cut_at_word(&"x".repeat(50), 10);
        assert_eq!(cut, format!("{}…", "x".repeat(9)));
        // Multi-byte characters are counted as characters and never split.
        let cut = cut_at_word(&"é ".repeat(100), 15);
        assert!(cut.chars().count() <= 15 && cut.ends_with('…'));
    }

    #[test]
    fn cut_of_150_stays_near_150() {
        let text = plain_text(&"lorem ipsum dolor sit amet ".repeat(100));
        let cut = cut_at_word(&text, 150);
        let n = cut.chars().count();
        assert!((140..=150).contains(&n), "{n} chars: {cut}");
        assert!(cut.ends_with("…") && !cut.ends_with(" …"));
    }

    fn content(kind: PushKind, body: &str, message_id: Option<i64>) -> Content<'_> {
        Content {
            kind: kind.as_str(),
            title: "demo",
            subtitle: kind.subtitle(),
            body,
            session_id: Some(SESSION),
            terminal_id: None,
            message_id,
            category: kind.category(),
            interruption_level: kind.interruption_level(),
            approval_id: None,
        }
    }

    #[test]
    fn each_kind_of_push_has_the_expected_json() {
        let cases = [
            (PushKind::TurnCompleted, Some(42), None, "turn_completed"),
            (
                PushKind::TurnFailed,
                Some(41),
                Some("Turn failed"),
                "turn_failed",
            ),
            (
                PushKind::TurnInterrupted,
                Some(40),
                Some("Turn interrupted"),
                "turn_interrupted",
            ),
            (
                PushKind::ProcessExited,
                None,
                Some("Agent process exited"),
                "process_exited",
            ),
        ];
        for (kind, message_id, subtitle, name) in cases {
            let c = content(kind, "Hello there", message_id);
            let headers = Headers {
                topic: Some("com.example.tether"),
                collapse_id: Some("tether-7"),
                expiration: None,
            };
            let n = notification(&c, TOKEN, headers).unwrap();
            let v = json_of(&n);
            let mut alert = json!({"title": "demo", "body": "Hello there"});
            if let Some(s) = subtitle {
                alert["subtitle"] = s.into();
            }
            assert_eq!(v["aps"]["alert"], alert, "{name}");
            assert_eq!(v["aps"]["thread-id"], SESSION, "{name}");
            assert_eq!(v["aps"]["sound"], "default", "{name}");
            assert_eq!(v["sessionId"], SESSION, "{name}");
            assert_eq!(v["kind"], name);
            match message_id {
                Some(id) => assert_eq!(v["messageId"], id, "{name}"),
                None => assert!(v.get("messageId").is_none(), "{name}"),
            }
            let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            let expected: &[&str] = match message_id {
                Some(_) => &["aps", "kind", "messageId", "sessionId"],
                None => &["aps", "kind", "sessionId"],
            };
            assert_eq!(keys, expected, "{name}: only these custom keys");
            assert!(n.to_json_string().unwrap().len() <= MAX_PAYLOAD_BYTES);
            // Headers a2 sends: topic, push type alert, priority 10, the collapse id.
            let o = n.options();
            assert_eq!(o.apns_topic, Some("com.example.tether"));
            assert_eq!(o.apns_push_type, Some(PushType::Alert));
            assert_eq!(
                o.apns_priority.as_ref().map(|p| p.to_string()).as_deref(),
                Some("10")
            );
            assert_eq!(
                o.apns_collapse_id.as_ref().map(|c| c.value),
                Some("tether-7")
            );
            assert_eq!(n.device_token(), TOKEN);
            assert!(
                !n.to_json_string().unwrap().contains(TOKEN),
                "token is a header only"
            );
        }
    }

    #[test]
    fn an_expiry_warning_has_its_category_expiration_and_a_collapse_id_per_session() {
        let c = content(PushKind::SessionExpiring, "4 hours left", None);
        let collapse = PushKind::SessionExpiring.collapse_id(7, SESSION);
        let headers = Headers {
            topic: Some("com.example.tether"),
            collapse_id: Some(&collapse),
            expiration: Some(1_900_000_000),
        };
        let n = notification(&c, TOKEN, headers).unwrap();
        let v = json_of(&n);
        assert_eq!(v["aps"]["category"], "SESSION_EXPIRING");
        assert_eq!(v["kind"], "session_expiring");
        assert_eq!(n.options().apns_expiration, Some(1_900_000_000));
        assert_eq!(
            n.options().apns_collapse_id.as_ref().map(|c| c.value),
            Some(format!("expiring-{SESSION}").as_str())
        );
        // Another warning about the same session collapses with it; other pushes do not.
        assert_eq!(PushKind::SessionExpiring.collapse_id(8, SESSION), collapse);
        assert_ne!(PushKind::TurnCompleted.collapse_id(7, SESSION), collapse);
    }

    #[test]
    fn a_100_kb_reply_fits_in_4096_bytes() {
        let reply = format!("**Result**: {}", "lorem ipsum dolor sit amet ".repeat(4000));
        assert!(reply.len() > 100_000);
        let text = cut_at_word(&plain_text(&reply), MAX_STORED_CHARS);
        let f = fit(&content(PushKind::TurnCompleted, &text, Some(1)), 150).unwrap();
        assert!(f.json.len() <= MAX_PAYLOAD_BYTES);
        assert!(f.body.starts_with("Result: lorem ipsum"));
        assert!(f.body.chars().count() <= 150 && f.body.ends_with('…'));
        let v: Value = serde_json::from_str(&f.json).unwrap();
        assert_eq!(v["aps"]["alert"]["body"], f.body.as_str());
    }

    #[test]
    fn a_preview_setting_too_large_for_apple_is_shrunk_until_it_fits() {
        // Escaped control characters take 6 bytes each and emoji 4: the bound is on bytes.
        let nasty = "\u{1}\"😀 ".repeat(5000);
        for text in [nasty.as_str(), &"word ".repeat(5000)] {
            let text = cut_at_word(text, MAX_STORED_CHARS);
            let long_title = "t".repeat(500);
            let whole = Content {
                title: &long_title,
                ..content(PushKind::TurnFailed, &text, Some(9))
            };
            let f = fit(&whole, 100_000).unwrap();
            assert!(f.json.len() <= MAX_PAYLOAD_BYTES, "{} bytes", f.json.len());
            assert!(
                f.json.len() > MAX_PAYLOAD_BYTES / 2,
                "shrunk no more than needed"
            );
            assert!(f.title.chars().count() <= MAX_TITLE_CHARS);
            let c = Content {
                title: &f.title,
                subtitle: f.subtitle.as_deref(),
                body: &f.body,
                ..whole
            };
            let headers = Headers {
                topic: Some("t"),
                collapse_id: Some("x"),
                expiration: Some(1),
            };
            let sent = notification(&c, TOKEN, headers).unwrap();
            assert_eq!(
                sent.to_json_string().unwrap(),
                f.json,
                "same JSON with headers set"
            );
        }
    }
}
