//! Sizes and durations as people read them, the same on every page, message and log line:
//! "28.9 KiB", "1 day 3 h", "30 min", and moments: "2026-12-05 12:54 UTC (in 3 h)".

/// "0 B", "512 B", "28.9 KiB", "1.2 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// "40 s", "12 min", "2 h 5 min", "1 day", "3 days 4 h".
pub fn duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (days, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    let day_s = |n: u64| format!("{n} day{}", if n == 1 { "" } else { "s" });
    match (days, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => day_s(d),
        (d, h, _) => format!("{} {h} h", day_s(d)),
    }
}

/// A moment as every page, table and message shows it: "2026-12-05 12:54 UTC (3 min ago)",
/// "2027-03-05 12:54 UTC (in 90 days)".
pub fn moment(t: time::OffsetDateTime, now: time::OffsetDateTime) -> String {
    let d = t - now;
    let relative = if d.whole_seconds() > 0 {
        time_left(d)
    } else {
        ago(-d)
    };
    format!("{} ({relative})", short_time(t))
}

/// "in 27 min", "in 3 h 5 min", "in 3 days", "now".
pub fn time_left(d: time::Duration) -> String {
    let minutes = (d.whole_seconds() + 59).max(0) / 60;
    match minutes {
        0 => "now".into(),
        m if m < 60 => format!("in {m} min"),
        m if m >= 48 * 60 => format!("in {} days", m / (24 * 60)),
        m if m % 60 == 0 => format!("in {} h", m / 60),
        m => format!("in {} h {} min", m / 60, m % 60),
    }
}

/// "just now", "3 min ago", "2 h ago", "4 days ago".
pub fn ago(d: time::Duration) -> String {
    let s = d.whole_seconds().max(0);
    match s {
        0..60 => "just now".into(),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        86_400..172_800 => "1 day ago".into(),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// `2026-11-29 14:03 UTC`: precise enough for a table.
pub fn short_time(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.format(&f).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes_keep_small_amounts_visible() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(29_594), "28.9 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn durations_read_as_words() {
        assert_eq!(duration(Duration::from_secs(40)), "40 s");
        assert_eq!(duration(Duration::from_secs(30 * 60)), "30 min");
        assert_eq!(
            duration(Duration::from_secs(2 * 3600 + 5 * 60)),
            "2 h 5 min"
        );
        assert_eq!(duration(Duration::from_secs(86_400)), "1 day");
        assert_eq!(
            duration(Duration::from_secs(3 * 86_400 + 4 * 3600 + 60)),
            "3 days 4 h"
        );
    }
}
