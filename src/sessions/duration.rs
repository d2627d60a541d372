//! Durations as tether writes them for people ("3h 12m"): in pushes, errors and the CLI.

use std::time::Duration;

/// A duration as people say it, in its two largest units: "45s", "12m 5s", "4h",
/// "3h 12m", "2d 4h".
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(first) = units.iter().position(|(n, _)| secs >= *n) else {
        return "0s".to_string();
    };
    let (n, unit) = units[first];
    let mut out = format!("{}{unit}", secs / n);
    if let Some((m, unit2)) = units.get(first + 1) {
        let rest = (secs % n) / m;
        if rest > 0 {
            out.push_str(&format!(" {rest}{unit2}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        let h = |s| human_duration(Duration::from_secs(s));
        assert_eq!(h(0), "0s");
        assert_eq!(h(45), "45s");
        assert_eq!(h(725), "12m 5s");
        assert_eq!(h(4 * 3600), "4h");
        assert_eq!(h(3 * 3600 + 12 * 60 + 59), "3h 12m");
        assert_eq!(h(2 * 86_400 + 4 * 3600 + 1), "2d 4h");
    }
}
